"""The router's planner: switches with bandwidth, holds its choice near a threshold (no flapping),
budget mode, forced candidates, and estimated profiles."""

import random

import numpy as np
import pytest

from pipeline.cost import Link
from pipeline.profiler import save_profile, validate_profile
from pipeline.selection import NoFeasibleCandidate
from serve.bandwidth import BandwidthEstimator, EstimatorConfig
from serve.planner import Planner
from serve.profiles import calibrate, estimate_entry, estimate_profile, fit_cost, resolve_profiles


@pytest.fixture(scope="module")
def planner(tiny_store):
    profiles = resolve_profiles(tiny_store.directory, tiny_store.manifest, ms_per_mmac=20.0)
    return Planner(tiny_store.manifest, profiles.device, profiles.edge)


def test_estimated_profile_is_valid_and_proportional_to_macs(tiny_store):
    doc = estimate_profile(tiny_store.manifest, ms_per_mmac=10.0, layer_ms=0.5)
    validate_profile(doc)
    base = doc["variants"]["vgg11-base"]
    assert base["head_ms"]["input"] == 0.0
    assert base["total_ms"] == pytest.approx(10.0 * tiny_store.get("vgg11-base").macs / 1e6
                                             + 0.5 * len(base["layers"]))


def test_profiles_come_from_files_when_present(tiny_store, tmp_path):
    edge = estimate_profile(tiny_store.manifest, 1.0)
    device = estimate_profile(tiny_store.manifest, 7.0)
    save_profile(tmp_path / "edge.json", edge)
    got = resolve_profiles(tiny_store.directory, tiny_store.manifest, str(tmp_path / "edge.json"),
                           slowdown=3.0)
    assert got.device["slowdown"] == 3.0 and "device = 3 x edge" in got.source
    save_profile(tmp_path / "edge.device.json", device)
    got = resolve_profiles(tiny_store.directory, tiny_store.manifest, str(tmp_path / "edge.json"))
    assert got.device["variants"]["vgg11-base"]["total_ms"] == device["variants"]["vgg11-base"]["total_ms"]
    with pytest.raises(ValueError):
        resolve_profiles(tiny_store.directory, tiny_store.manifest)  # nothing to estimate with


def test_cost_fit_recovers_a_linear_law_and_falls_back_without_a_slope():
    mmacs = np.array([0.0, 1.0, 2.0, 4.0])
    assert fit_cost(mmacs, 0.5 * mmacs + 0.1) == pytest.approx((0.5, 0.1))
    # times that fall as MACs grow: no per-MAC law; the whole time is charged per MAC
    assert fit_cost(mmacs, np.array([0.4, 0.3, 0.2, 0.1])) == pytest.approx((1.0 / 7.0, 0.0))


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_calibration_times_the_model_with_the_served_runtime(tiny_store, runtime):
    model, spec, _ = tiny_store.load_model("vgg11-base")
    ms_per_mmac, layer_ms = calibrate(model, spec, warmup=1, repeats=2, runtime=runtime)
    estimate = estimate_entry(spec, ms_per_mmac, layer_ms)
    assert 0 < estimate["total_ms"] < 1000  # a model of a few MMACs: well under a second


def test_fewer_bytes_when_the_bandwidth_drops(planner):
    fast = planner.decide(None, Link(1e9), accuracy_floor=0.0)
    slow = planner.decide(fast.candidate, Link(1e4), accuracy_floor=0.0)
    assert slow.switched and slow.candidate.bytes_sent < fast.candidate.bytes_sent


def _threshold(planner, floor):
    """A bandwidth where the stateless best changes (bisection over a log scale)."""
    low, high = 1e3, 1e9
    best_high = planner.plan(Link(high), floor).best
    for _ in range(60):
        mid = (low * high) ** 0.5
        if planner.plan(Link(mid), floor).best == best_high:
            high = mid
        else:
            low = mid
    return high


def test_choice_does_not_flap_around_a_threshold(planner):
    threshold = _threshold(planner, 0.0)
    stateless = {planner.plan(Link(threshold * f), 0.0).best for f in (0.97, 1.03)}
    assert len(stateless) == 2  # the plain selection would flap
    choices = [None]
    for f in [0.97, 1.03] * 10:
        choices.append(planner.decide(choices[-1], Link(threshold * f), accuracy_floor=0.0).candidate)
    assert len(set(choices[1:])) == 1


def test_estimator_and_planner_together_switch_once_per_change(planner):
    """Noisy samples around two rates: the chosen bytes change once when the link drops."""
    rng = random.Random(0)
    est = BandwidthEstimator(EstimatorConfig(initial_bps=1e9, window=8, min_sample_bytes=0))
    history = []
    for rate in [1e9] * 20 + [1e4] * 40:
        est.add_transfer(2000, 2000 * 8 / (rate * rng.uniform(0.7, 1.3)))
        previous = history[-1] if history else None
        history.append(planner.decide(previous, Link(est.estimate_bps), accuracy_floor=0.0).candidate)
    changes = sum(a != b for a, b in zip(history, history[1:], strict=False))
    assert changes == 1
    assert history[-1].bytes_sent < history[0].bytes_sent


def test_latency_budget_mode_keeps_a_feasible_choice(planner):
    decision = planner.plan(Link(1e6), latency_budget_ms=1e6)
    first = planner.decide(None, Link(1e6), latency_budget_ms=1e6)
    assert first.candidate == decision.best
    with pytest.raises(NoFeasibleCandidate):
        planner.decide(first.candidate, Link(1e6), latency_budget_ms=1e-3)


def test_forced_candidates_and_splits(planner):
    assert planner.splits_of("vgg11-s2-conv5_2-i1") == ["input", "conv5_2", "pool5", "output"]
    assert planner.candidate("vgg11-s2-conv5_2-i1", "input").strategy == "raw-input"
    assert planner.candidate("vgg11-base", "conv3_1").split == "conv3_1"
    with pytest.raises(ValueError, match="splits are"):
        planner.candidate("vgg11-s2-conv5_2-i1", "conv1_1")
    with pytest.raises(KeyError):
        planner.candidate("nope", "input")


def test_device_slowdown_plans_for_the_reported_device_speed(planner):
    edge = planner.table_for(1.0)
    slow = planner.table_for(1000.0)
    assert planner.table_for(1000.0) is slow  # cached
    i = next(i for i, c in enumerate(edge.candidates) if c.head_ms > 0)
    assert slow.candidates[i].head_ms == pytest.approx(1000.0 * edge.candidates[i].head_ms)
    assert slow.candidates[i].tail_ms == pytest.approx(edge.candidates[i].tail_ms)
    link = Link(1e6)
    fast_plan = planner.plan(link, accuracy_floor=0.0, device_slowdown=1.0)
    slow_plan = planner.plan(link, accuracy_floor=0.0, device_slowdown=1000.0)
    # A very slow device runs (almost) nothing itself: the input goes to the edge.
    assert slow_plan.best.head_ms == 0.0 and fast_plan.best.head_ms > 0.0
    assert planner.plan(link, accuracy_floor=0.0).best == planner.table.select(link, 0.0).best


def test_a_device_overhead_is_added_to_heads_that_run(planner):
    plain = planner.table_for(2.0)
    charged = planner.table_for(2.0, 1.5)
    for a, b in zip(plain.candidates, charged.candidates, strict=True):
        assert b.head_ms == (a.head_ms + 1.5 if a.head_ms > 0 else 0.0)
    with pytest.raises(ValueError, match="device_slowdown"):
        planner.table_for(None, 1.0)


def test_a_device_that_sends_frames_is_never_planned_an_image_upload(planner):
    from pipeline.selection import JPEG_INPUT, RAW_INPUT

    fast_link = Link(1e9)  # a slow device and a fast link: uploading the input wins
    everything = planner.plan(fast_link, accuracy_floor=0.0, top_k=100, device_slowdown=1000.0)
    assert any(c.strategy == RAW_INPUT for c, _ in everything.ranked)
    frames = planner.plan(fast_link, accuracy_floor=0.0, top_k=100, device_slowdown=1000.0,
                          frames_only=True)
    assert frames.ranked and all(c.strategy not in (RAW_INPUT, JPEG_INPUT) for c, _ in frames.ranked)
    assert any(c.split == "output" for c, _ in frames.ranked)  # all on the device stays
    # without a device speed too
    assert all(c.strategy != RAW_INPUT for c, _ in planner.plan(
        fast_link, accuracy_floor=0.0, top_k=100, frames_only=True).ranked)


def test_a_device_that_timed_its_heads_is_planned_by_its_own_times(planner):
    link = Link(1e3)  # almost no uplink: the device runs everything itself
    best = planner.plan(link, accuracy_floor=0.0, device_slowdown=1.0, frames_only=True).best
    assert best.split == "output"
    # that model timed 10 s on this device, another whole model 1 ms: the other one wins
    other = next(v for v in planner.variants if v != best.variant_id
                 and (v, "output") in {(c.variant_id, c.split) for c in planner.table.candidates})
    times = planner.device_times({best.variant_id: {"output": 10_000.0}, other: {"output": 1.0}})
    timed = planner.plan(link, accuracy_floor=0.0, device_slowdown=1.0, frames_only=True,
                         device_ms=times)
    assert (timed.best.variant_id, timed.best.split, timed.best.head_ms) == (other, "output", 1.0)
    # the same times give the same cached table; other candidates keep the scaled profile
    table = planner.table_for(1.0, 0.0, True, times)
    assert planner.table_for(1.0, 0.0, True, dict(times)) is table
    plain = planner.table_for(1.0, 0.0, True)
    for a, b in zip(plain.candidates, table.candidates, strict=True):
        if (a.variant_id, a.split) not in times:
            assert a == b
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        planner.device_times({"nope": {"output": 1.0}})
    with pytest.raises(ValueError, match="not served at"):
        planner.device_times({"vgg11-s2-conv5_2-i1": {"conv1_1": 1.0}})
