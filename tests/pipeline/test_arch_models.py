"""ResNet-18 and MobileNetV2 (torchvision definitions, CIFAR stems): structure, split points,
analytic MACs (head then tail: test_models.py) against PyTorch's FLOP counter, channel groups against
Torch-Pruning's dependency graph, and one clear error per bad input."""

import pytest
import torch
import torch_pruning as tp
from torch.utils.flop_counter import FlopCounterMode

from pipeline.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pipeline.models import ArchSpec, build, make_spec
from pipeline.split import (
    check_split,
    head_tail_macs,
    macs_per_filter,
    pruned_layer,
    split_model,
    split_points,
    stage_costs,
    total_macs,
)

ARCH_WIDTHS = [("resnet18", 0.125), ("mobilenetv2", 0.25)]


@pytest.fixture(scope="module", params=ARCH_WIDTHS, ids=[a for a, _ in ARCH_WIDTHS])
def net(request):
    torch.manual_seed(0)
    arch, width = request.param
    spec = make_spec(arch, width, in_channels=1)
    return build(spec).eval(), spec


def test_split_points_are_the_block_boundaries():
    resnet = split_points(make_spec("resnet18", 0.125, in_channels=1))
    assert resnet == ["input", "stem", "layer1_0", "layer1_1", "layer2_0", "layer2_1", "layer3_0",
                      "layer3_1", "layer4_0", "layer4_1", "pool", "output"]
    mobilenet = split_points(make_spec("mobilenetv2", 0.25, in_channels=1))
    assert mobilenet == ["input", "stem", *(f"block{i}" for i in range(1, 18)), "last", "pool", "output"]


def test_models_come_from_torchvision_with_cifar_stems(net):
    from torchvision.models.mobilenetv2 import InvertedResidual
    from torchvision.models.resnet import BasicBlock

    model, spec = net
    block_type = BasicBlock if spec.arch == "resnet18" else InvertedResidual
    blocks = [m for m in model.modules() if isinstance(m, block_type)]
    assert len(blocks) == (8 if spec.arch == "resnet18" else 17)
    stem_conv = model.stages["stem"][0]
    assert stem_conv.in_channels == 1 and stem_conv.kernel_size == (3, 3) and stem_conv.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())


def _flop_counter_macs(module, x) -> int:
    with FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops() // 2 // x.shape[0]  # FLOPs count a MAC as 2


def test_analytic_macs_match_the_flop_counter_for_every_head_and_tail(net):
    model, spec = net
    x = torch.randn(2, 1, 32, 32)
    for split in split_points(spec):
        head, tail = split_model(model, split)
        head_macs, tail_macs = head_tail_macs(spec, split)
        with torch.no_grad():
            assert _flop_counter_macs(head, x) == head_macs, split
            assert _flop_counter_macs(tail, head(x)) == tail_macs, split
    assert total_macs(spec) == _flop_counter_macs(model, x)


def test_macs_per_channel_is_the_drop_from_removing_one(net):
    _, spec = net
    saved = macs_per_filter(spec)
    widths = spec.width_of()
    for group in spec.group_names:
        smaller = spec.with_widths({group: widths[group] - 1})
        assert total_macs(spec) - total_macs(smaller) == saved[group], group


def test_layout_groups_are_the_dependency_graph_groups(net):
    """Every channel group of the layout is exactly what Torch-Pruning couples to its root conv:
    the same convs and BatchNorms lose output channels, nothing else does."""
    model, spec = net
    model = build(spec)
    graph = tp.DependencyGraph().build_dependency(model, torch.zeros(1, 1, 32, 32), verbose=False)
    names = {m: n for n, m in model.named_modules()}
    for group in spec.group_names:
        members = spec.layout.members(group)
        root = model.get_submodule(members[0].path)
        pruning = graph.get_pruning_group(root, tp.prune_conv_out_channels, [0])
        pruned_out = {names[dep.target.module] for dep, _ in pruning
                      if isinstance(dep.target.module, torch.nn.Conv2d | torch.nn.BatchNorm2d)
                      and graph.is_out_channel_pruning_fn(dep.handler)}
        expected = {c.path for c in members} | {c.bn for c in members}
        assert pruned_out == expected, group


def test_the_split_tensor_is_set_by_the_stream_group():
    resnet = make_spec("resnet18", 0.125, in_channels=1)
    assert [pruned_layer(resnet, p) for p in ("stem", "layer1_1", "layer2_0", "layer4_1", "pool")] == \
        ["layer1", "layer1", "layer2", "layer4", "layer4"]
    mobilenet = make_spec("mobilenetv2", 0.25, in_channels=1)
    assert [pruned_layer(mobilenet, p) for p in ("stem", "block1", "block3", "block17", "pool")] == \
        ["stem", "stage1", "stage2", "stage7", "last"]
    assert stage_costs(resnet)[-2].out_shape == (resnet.width_of()["layer4"], 1, 1)


def test_checkpoints_rebuild_from_json(tmp_path, net):
    model, spec = net
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, model, spec)
    loaded, loaded_spec, _ = load_checkpoint(path)
    assert loaded_spec == spec
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_an_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="unknown model 'resnet50'; choose one of .*resnet18"):
        make_spec("resnet50")


def test_a_checkpoint_of_one_architecture_does_not_load_as_another(tmp_path):
    from safetensors.torch import load_file, save_file

    resnet = make_spec("resnet18", 0.125, in_channels=1)
    path = tmp_path / "resnet.safetensors"
    save_checkpoint(path, build(resnet), resnet)
    # the same tensors, labelled as a MobileNetV2 of a valid width list
    mobilenet = make_spec("mobilenetv2", 0.25, in_channels=1)
    forged = tmp_path / "forged.safetensors"
    save_file(load_file(path), forged, metadata={"format": "twostep-checkpoint/1",
                                                 "spec": mobilenet.to_json(), "meta": "{}"})
    with pytest.raises(CheckpointError, match="weights do not fit architecture mobilenetv2"):
        load_checkpoint(forged)
    with pytest.raises(ValueError, match="resnet18 has 12 channel groups but 25 widths"):
        ArchSpec.from_dict({**resnet.to_dict(), "widths": list(mobilenet.widths)})


def test_a_split_that_is_not_a_block_boundary_is_refused():
    spec = make_spec("resnet18", 0.125, in_channels=1)
    with pytest.raises(ValueError, match="unknown split point 'layer1_0_conv1' for resnet18; "
                                         "split points are input, stem, layer1_0"):
        check_split(spec, "layer1_0_conv1")
