import pytest
import torch
from modelutil import randomise_batchnorm

from pipeline.models import build, make_spec
from pipeline.split import stage_costs, total_macs
from pipeline.surgery import remove_filters


@pytest.mark.parametrize("input_size", [32, 64])
def test_removing_filters_with_zero_outgoing_weights_changes_nothing(input_size):
    torch.manual_seed(0)
    spec = make_spec("vgg11", 0.125, in_channels=1, input_size=input_size)
    model = build(spec).eval()
    randomise_batchnorm(model)
    removals = {"conv1_1": [0, 3], "conv3_2": [1, 2, 5], "conv5_2": [0, 7]}
    with torch.no_grad():
        consumers = list(model.conv_blocks().values())
        names = list(model.conv_blocks())
        side2 = (input_size // 32) ** 2
        for name, indices in removals.items():
            i = names.index(name)
            if i + 1 < len(names):
                consumers[i + 1].conv.weight[:, indices] = 0
            else:
                for c in indices:
                    model.classifier.linear.weight[:, c * side2:(c + 1) * side2] = 0
    x = torch.randn(4, 1, input_size, input_size)
    pruned, pruned_spec = remove_filters(model, spec, removals)
    pruned.eval()
    with torch.no_grad():
        assert torch.allclose(pruned(x), model(x), atol=1e-5)
    widths = pruned_spec.width_of()
    assert widths["conv1_1"] == 6 and widths["conv3_2"] == 29 and widths["conv5_2"] == 62
    for name, block in pruned.conv_blocks().items():
        assert block.conv.out_channels == widths[name] == block.bn.running_mean.numel()
    assert pruned.classifier.linear.in_features == widths["conv5_2"] * side2
    assert total_macs(pruned_spec) < total_macs(spec)
    assert stage_costs(pruned_spec)[1].out_shape[0] == 6


def test_running_statistics_are_sliced_not_reset():
    torch.manual_seed(1)
    spec = make_spec("vgg11", 0.125, in_channels=1)
    model = build(spec)
    randomise_batchnorm(model)
    pruned, _ = remove_filters(model, spec, {"conv2_1": [0, 2]})
    keep = [i for i in range(16) if i not in (0, 2)]
    old, new = model.stages["conv2_1"].bn, pruned.stages["conv2_1"].bn
    assert torch.equal(new.running_mean, old.running_mean[keep])
    assert torch.equal(new.running_var, old.running_var[keep])
    assert torch.equal(pruned.stages["conv3_1"].conv.weight, model.stages["conv3_1"].conv.weight[:, keep])


def test_bad_removals_are_refused():
    spec = make_spec("vgg11", 0.0625, in_channels=1)
    model = build(spec)
    with pytest.raises(ValueError, match="disconnect"):
        remove_filters(model, spec, {"conv1_1": list(range(4))})
    with pytest.raises(ValueError, match="cannot remove indices"):
        remove_filters(model, spec, {"conv1_1": [9]})
    with pytest.raises(ValueError, match="unknown channel groups"):
        remove_filters(model, spec, {"conv9_1": [0]})
