"""Surgery through Torch-Pruning's dependency graph (ResNet-18, MobileNetV2) is exact: the pruned
network equals the original with the removed channels zeroed (every BatchNorm of the group set
to weight 0, bias 0), at every split point, in eval mode and in train mode, running statistics
included. Property tests over random removals."""

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from modelutil import randomise_batchnorm

from pipeline.models import build, make_spec
from pipeline.split import split_points, total_macs
from pipeline.split_bytes import stage_outputs
from pipeline.surgery import remove_filters

SPECS = {"resnet18": make_spec("resnet18", 0.125, in_channels=1),
         "mobilenetv2": make_spec("mobilenetv2", 0.25, in_channels=1)}


def _model(arch: str, seed: int):
    torch.manual_seed(seed)
    return randomise_batchnorm(build(SPECS[arch]))


def _zeroed(model, spec, removals):
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for group, indices in removals.items():
            for conv in spec.layout.members(group):
                bn = zeroed.get_submodule(conv.bn)
                bn.weight[indices] = 0
                bn.bias[indices] = 0
    return zeroed


@st.composite
def removals(draw, arch):
    spec = SPECS[arch]
    chosen = draw(st.lists(st.sampled_from(spec.group_names), unique=True, min_size=1, max_size=6))
    out = {}
    for group in chosen:
        width = spec.width_of()[group]
        out[group] = draw(st.lists(st.integers(0, width - 1), unique=True, max_size=width - 1))
    return out


def _kept(width: int, removed: list[int]) -> list[int]:
    return [i for i in range(width) if i not in removed]


@pytest.mark.parametrize("arch", list(SPECS))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_pruned_equals_zeroed_at_every_split(arch, data):
    spec = SPECS[arch]
    cut = data.draw(removals(arch))
    model = _model(arch, seed=data.draw(st.integers(0, 1000))).eval()
    pruned, pruned_spec = remove_filters(model, spec, cut)
    zeroed = _zeroed(model, spec, cut).eval()
    x = torch.randn(2, 1, 32, 32)
    points = split_points(spec)[1:]
    expected, got = stage_outputs(zeroed, x, points), stage_outputs(pruned, x, points)
    widths = spec.width_of()
    for split in points:
        group = spec.layout.stage(split).out_group
        reference = expected[split]
        if group is not None:  # the pruned tensor lacks the removed (all-zero) channels
            kept = _kept(widths[group], cut.get(group, []))
            assert torch.count_nonzero(reference[:, [i for i in range(widths[group]) if i not in kept]]) == 0
            reference = reference[:, kept]
        assert torch.allclose(got[split], reference, atol=1e-5), split
    assert pruned_spec.width_of() == {g: w - len(cut.get(g, [])) for g, w in widths.items()}
    assert total_macs(pruned_spec) <= total_macs(spec)


@pytest.mark.parametrize("arch", list(SPECS))
def test_train_mode_outputs_and_running_statistics_match(arch):
    spec = SPECS[arch]
    model = _model(arch, seed=3).train()
    cut = {spec.group_names[0]: [0, 2], spec.group_names[1]: [1], spec.group_names[-1]: [3, 4, 5]}
    pruned, _ = remove_filters(model, spec, cut)
    zeroed = _zeroed(model, spec, cut).train()
    assert pruned.training
    for m in [*pruned.modules(), *zeroed.modules()]:
        if isinstance(m, torch.nn.Dropout):
            m.eval()  # random masks over different widths cannot match
    x = torch.randn(8, 1, 32, 32)
    assert torch.allclose(pruned(x), zeroed(x), atol=1e-4)
    widths = spec.width_of()
    for conv in spec.layout.convs():
        kept = _kept(widths[conv.out_group], cut.get(conv.out_group, []))
        new, old = pruned.get_submodule(conv.bn), zeroed.get_submodule(conv.bn)
        assert torch.allclose(new.running_mean, old.running_mean[kept], atol=1e-5), conv.bn
        assert torch.allclose(new.running_var, old.running_var[kept], atol=1e-5), conv.bn


@pytest.mark.parametrize("arch", list(SPECS))
def test_the_original_is_untouched_and_bad_removals_are_refused(arch):
    spec = SPECS[arch]
    model = _model(arch, seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    group = spec.group_names[0]
    remove_filters(model, spec, {group: [0]})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="disconnect"):
        remove_filters(model, spec, {group: list(range(spec.width_of()[group]))})
    with pytest.raises(ValueError, match="cannot remove indices"):
        remove_filters(model, spec, {group: [999]})
    with pytest.raises(ValueError, match="unknown channel groups"):
        remove_filters(model, spec, {"conv1_1": [0]})
