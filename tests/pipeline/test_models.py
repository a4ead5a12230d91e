import pytest
import torch

from pipeline.models import ArchSpec, build, make_spec
from pipeline.split import (
    head_tail_macs,
    pruned_layer,
    split_model,
    split_points,
    split_shape,
    stage_costs,
    total_macs,
)


@pytest.mark.parametrize("arch", ["vgg11", "vgg16", "resnet18", "mobilenetv2"])
def test_head_tail_compose_to_full_model_at_every_split(arch):
    torch.manual_seed(0)
    spec = make_spec(arch, 0.0625, in_channels=1)
    model = build(spec).eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        full = model(x)
        for split in split_points(spec):
            head, tail = split_model(model, split)
            mid = head(x)
            assert tuple(mid.shape[1:]) == split_shape(spec, split), split
            assert torch.equal(tail(mid), full), split


def test_split_point_names_follow_the_paper():
    spec = make_spec("vgg16", 0.25)
    points = split_points(spec)
    assert points[0] == "input" and points[-1] == "output"
    assert points[1:4] == ["conv1_1", "conv1_2", "pool1"]
    assert len(points) == 2 + 13 + 5  # 18 inner split points, as in the paper
    assert pruned_layer(spec, "pool3") == "conv3_3"
    assert pruned_layer(spec, "conv4_2") == "conv4_2"
    assert pruned_layer(spec, "input") is None
    with pytest.raises(ValueError, match="unknown split point 'conv9_9'"):
        split_shape(spec, "conv9_9")


def test_macs_match_a_hand_count_for_a_small_vgg11():
    spec = ArchSpec("vgg11", (2, 3, 4, 4, 5, 5, 6, 6), in_channels=1, num_classes=10)
    # 3x3 convs: 9 * c_in * c_out * side^2 at sides 32, 16, 8, 8, 4, 4, 2, 2; linear 6*10.
    expected = [
        9 * 1 * 2 * 32 * 32, 9 * 2 * 3 * 16 * 16, 9 * 3 * 4 * 8 * 8, 9 * 4 * 4 * 8 * 8,
        9 * 4 * 5 * 4 * 4, 9 * 5 * 5 * 4 * 4, 9 * 5 * 6 * 2 * 2, 9 * 6 * 6 * 2 * 2,
    ]
    assert total_macs(spec) == sum(expected) + 6 * 10
    head, tail = head_tail_macs(spec, "pool2")
    assert head == expected[0] + expected[1]
    assert tail == sum(expected[2:]) + 60
    assert head_tail_macs(spec, "input") == (0, total_macs(spec))
    assert head_tail_macs(spec, "output") == (total_macs(spec), 0)


def test_macs_agree_with_counting_the_real_modules():
    spec = make_spec("vgg16", 0.125, in_channels=3)
    model = build(spec)
    counted = 0
    x = torch.zeros(1, 3, 32, 32)
    for name, stage in model.ordered_stages():
        y = stage(x)
        for m in stage.modules():
            if isinstance(m, torch.nn.Conv2d):
                counted += m.weight.numel() * y.shape[2] * y.shape[3]
            elif isinstance(m, torch.nn.Linear):
                counted += m.weight.numel()
        assert tuple(y.shape[1:]) == next(c.out_shape for c in stage_costs(spec) if c.name == name)
        x = y
    assert counted == total_macs(spec)


def test_width_multiplier_and_input_channels():
    spec = make_spec("vgg16", 0.25, in_channels=1, num_classes=7)
    assert spec.widths[0] == 16 and spec.widths[-1] == 128
    assert build(spec)(torch.zeros(2, 1, 32, 32)).shape == (2, 7)
    assert 15 < total_macs(make_spec("vgg16")) / total_macs(make_spec("vgg16", 0.25)) < 17


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"arch": "vgg15"}, "unknown model 'vgg15'"),
        ({"arch": "vgg16", "width_mult": 0}, "width multiplier"),
        ({"arch": "vgg16", "width_mult": -1}, "width multiplier"),
    ],
)
def test_bad_model_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_spec(**kwargs)


def test_spec_json_round_trip_and_validation():
    spec = make_spec("vgg13", 0.5, in_channels=1)
    assert ArchSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="width of conv1_1"):
        ArchSpec("vgg11", (0, 1, 1, 1, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="8 channel groups but 2 widths"):
        ArchSpec("vgg11", (1, 2))
    with pytest.raises(ValueError, match="unknown keys"):
        ArchSpec.from_dict({**spec.to_dict(), "evil": 1})
    with pytest.raises(ValueError, match="multiple of 32"):
        ArchSpec("vgg11", (1,) * 8, input_size=28)


def test_macs_per_filter_is_the_exact_saving_of_removing_one_filter():
    from pipeline.split import macs_per_filter

    spec = make_spec("vgg16", 0.125, in_channels=1)
    saved = macs_per_filter(spec)
    for name, width in spec.width_of().items():
        assert total_macs(spec) - total_macs(spec.with_widths({name: width - 1})) == saved[name]
