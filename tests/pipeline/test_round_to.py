"""Hardware-aligned pruning (`round_to`): step 1 leaves every channel group it cuts at a multiple
of `round_to` (a group at or below it keeps its width), the MAC-target clipping still stops at
the target, step 2's ladder is rounded above `round_to` only, and surgery on rounded removals is
exact (the pruned network equals the original with those channels zeroed, at every split)."""

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from modelutil import randomise_batchnorm

from pipeline.config import PruneConfig
from pipeline.data import load_splits
from pipeline.models import build, make_spec
from pipeline.schedule import step2_widths
from pipeline.split import split_points, total_macs
from pipeline.split_bytes import stage_outputs
from pipeline.steps import removals_within, step1_iteration, step2_ladder
from pipeline.surgery import remove_filters
from pipeline.taylor import aligned_floor, group_blocks, lowest_blocks, lowest_filters

SPECS = {"vgg11": make_spec("vgg11", 0.125, in_channels=1),
         "resnet18": make_spec("resnet18", 0.125, in_channels=1),
         "mobilenetv2": make_spec("mobilenetv2", 0.25, in_channels=1)}


def _scores(widths: dict[str, int], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(w, generator=generator) for name, w in widths.items()}


def _after(widths: dict[str, int], removals: dict[str, list[int]]) -> dict[str, int]:
    return {n: w - len(removals.get(n, ())) for n, w in widths.items()}


def _check_aligned(before: dict[str, int], after: dict[str, int], round_to: int, min_width: int = 1):
    floor = aligned_floor(min_width, round_to)
    for name, width in after.items():
        if width != before[name]:  # a group step 1 cut: a multiple, at or above the floor
            assert width % round_to == 0 and width >= floor, (name, before[name], width)
        if before[name] <= floor:  # at or below the floor: left as it is
            assert width == before[name], name


@settings(max_examples=60, deadline=None)
@given(widths=st.lists(st.integers(1, 40), min_size=1, max_size=6), round_to=st.sampled_from([2, 4, 8]),
       count=st.integers(0, 120), min_width=st.integers(1, 10), seed=st.integers(0, 10_000))
def test_every_cut_group_keeps_a_multiple_and_blocks_go_lowest_first(widths, round_to, count,
                                                                    min_width, seed):
    widths = {f"g{i}": w for i, w in enumerate(widths)}
    scores = _scores(widths, seed)
    chosen = lowest_blocks(scores, count, min_width, round_to)
    after = _after(widths, chosen)
    _check_aligned(widths, after, round_to, min_width)
    removed = sum(len(v) for v in chosen.values())
    available = sum(len(b) for s in scores.values() for _, b in group_blocks(s, min_width, round_to))
    assert removed == available if removed < count else count <= removed < count + round_to
    for name, indices in chosen.items():  # within a group, the lowest channels go
        kept = sorted(set(range(widths[name])) - set(indices))
        assert scores[name][indices].max() <= scores[name][kept].min()
    more = lowest_blocks(scores, count + 1, min_width, round_to)  # a prefix: more never un-chooses
    assert all(set(indices) <= set(more.get(name, ())) for name, indices in chosen.items())


def test_round_to_one_is_the_unrounded_selection():
    scores = _scores({"a": 13, "b": 7, "c": 30}, seed=4)
    for count in (0, 1, 5, 17, 40):
        assert lowest_filters(scores, count, 2, round_to=1) == lowest_filters(scores, count, 2)


def test_a_group_at_or_below_round_to_keeps_its_width_and_an_odd_one_aligns_first():
    scores = {"narrow": torch.zeros(5), "eight": torch.zeros(8), "odd": torch.arange(13.0) / 100}
    chosen = lowest_blocks(scores, 100, 1, 8)
    assert set(chosen) == {"odd"} and chosen["odd"] == [0, 1, 2, 3, 4]  # 13 -> 8, not lower
    assert group_blocks(torch.rand(16), min_width=9, round_to=8) == []  # floor 16
    assert aligned_floor(1, 8) == 8 and aligned_floor(9, 8) == 16 and aligned_floor(3, 1) == 3


@pytest.mark.parametrize("round_to", [1, 8])
def test_the_iteration_that_reaches_the_mac_target_stops_at_the_fewest_blocks(round_to):
    spec = make_spec("vgg11", 0.25, in_channels=1)
    widths = spec.width_of()
    scores = _scores(widths, seed=1)
    base = total_macs(spec)
    limit = int(base / 1.3)

    def macs(removals):
        return total_macs(spec.with_widths(_after(widths, removals)))

    chosen = removals_within(scores, spec, 400, 1, limit, round_to)
    assert macs(chosen) <= limit
    _check_aligned(widths, _after(widths, chosen), max(round_to, 1))
    removed = sum(map(len, chosen.values()))
    fewer = lowest_filters(scores, removed - round_to, 1, round_to)  # one block less
    assert macs(fewer) > limit
    # without a target the whole count goes, still in blocks
    whole = removals_within(scores, spec, 40, 1, None, round_to)
    assert 40 <= sum(map(len, whole.values())) < 40 + round_to


def test_step2_ladder_is_rounded_above_round_to_only():
    assert step2_widths(256, 8, 1, 8) == [128, 64, 32, 16, 8, 4, 2, 1]
    assert step2_widths(957, 8, 1, 8) == [408, 176, 72, 32, 16, 6, 2, 1]
    assert step2_widths(957, 8) == [406, 172, 73, 31, 13, 6, 2, 1]
    for width in range(2, 120):
        ladder = step2_widths(width, 6, 1, 4)
        assert ladder == sorted(set(ladder), reverse=True) and ladder[-1] == 1
        assert all(w < width and (w <= 4 or w % 4 == 0) for w in ladder)
    spec = make_spec("vgg11", 0.25, in_channels=1)
    assert step2_ladder(spec, "conv5_2", PruneConfig(step2_steps=4, step2_round_to=8)) == [40, 8, 3, 1]
    assert PruneConfig().step2_round_to == 1 and PruneConfig().step1_round_to == 8


# ---- exact surgery on rounded removals ----------------------------------------------------

def _zeroed(model, spec, removals):
    """The original with the removed channels zeroed wherever their group's BatchNorms emit them."""
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for group, indices in removals.items():
            for conv in spec.layout.members(group):
                bn = zeroed.get_submodule(conv.bn)
                bn.weight[indices] = 0
                bn.bias[indices] = 0
    return zeroed


@pytest.mark.parametrize("arch", list(SPECS))
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_rounded_removals_equal_the_original_with_those_channels_zeroed(arch, data):
    spec = SPECS[arch]
    widths = spec.width_of()
    round_to = data.draw(st.sampled_from([2, 4, 8]))
    count = data.draw(st.integers(1, sum(widths.values()) // 2))
    cut = lowest_blocks(_scores(widths, data.draw(st.integers(0, 1000))), count, 1, round_to)
    torch.manual_seed(data.draw(st.integers(0, 1000)))
    model = randomise_batchnorm(build(spec)).eval()
    pruned, pruned_spec = remove_filters(model, spec, cut)
    _check_aligned(widths, pruned_spec.width_of(), round_to)
    zeroed = _zeroed(model, spec, cut).eval()
    x = torch.randn(2, 1, 32, 32)
    points = split_points(spec)[1:]
    expected, got = stage_outputs(zeroed, x, points), stage_outputs(pruned, x, points)
    for split in points:
        group = spec.layout.stage(split).out_group
        reference = expected[split]
        if group is not None:  # the pruned tensor lacks the removed (all-zero) channels
            gone = set(cut.get(group, []))
            kept = [i for i in range(widths[group]) if i not in gone]
            assert torch.count_nonzero(reference[:, sorted(gone)]) == 0
            reference = reference[:, kept]
        assert torch.allclose(got[split], reference, atol=1e-5), split


@pytest.mark.parametrize("arch", list(SPECS))
def test_a_real_rounded_step1_iteration_leaves_multiples(arch, fashion_dir):
    """Rank, cut (to the MAC target when it is near), evaluate: a real step-1 iteration of each
    architecture with step1_round_to = 8 leaves every group it cut at a multiple of 8."""
    torch.manual_seed(0)
    spec = SPECS[arch]
    splits = load_splits("fashion-mnist", fashion_dir, 0.2)
    for target in (0.0, 1.1):
        config = PruneConfig(rank_batches=1, batch_size=16, step1_finetune_epochs=0, step1_divisor=4,
                             step1_target_mac_reduction=target, mac_weight=0.1)
        limit = int(total_macs(spec) / target) if target else None
        snap = step1_iteration(build(spec), spec, splits, config, torch.Generator().manual_seed(0),
                               per_iteration := -(-sum(spec.widths) // 4), 1, mac_limit=limit)
        before, after = spec.width_of(), snap.spec.width_of()
        assert after != before
        _check_aligned(before, after, 8)
        assert all(w % 8 == 0 for w in before.values())  # so every group stays a multiple
        assert all(w % 8 == 0 for w in after.values())
        removed = sum(before.values()) - sum(after.values())
        if limit is None:
            assert per_iteration <= removed < per_iteration + 8
        else:
            assert snap.macs <= limit and removed < per_iteration
        assert snap.removed == {n: before[n] - after[n] for n in before if before[n] != after[n]}
