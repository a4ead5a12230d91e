"""The router replayed over a trace in the cost model's time (`serve.trace_replay`): the oracle
bounds it, a stall costs at most the deadline plus one on-device inference, and after a dip the
router offloads again within 3 s with the default settings (and did not with the old ones)."""

import pytest

from pipeline.profiler import derive_profile
from pipeline.traces import parse_trace
from serve.bandwidth import EstimatorConfig
from serve.planner import Planner
from serve.profiles import estimate_profile
from serve.settings import AppArgs
from serve.trace_replay import (
    RouterPolicy,
    best_fixed,
    fixed_strategies,
    recovery_delays,
    replay_fixed,
    replay_oracle,
    replay_router,
)

FLOOR, FPS, RTT_MS = 0.89, 5.0, 10.0
OLD = RouterPolicy(EstimatorConfig(initial_bps=1e6, window=8, max_age_s=30.0, band=0.25),
                   probe_bytes=4096, probe_interval_s=2.0, deadline_ms=None)


@pytest.fixture(scope="module")
def planner(tiny_store):
    edge = estimate_profile(tiny_store.manifest, 0.5, 0.05)
    # a device 200x slower than the edge: offloading wins on a 2 Mbit/s link, not at 20 kbit/s
    return Planner(tiny_store.manifest, derive_profile(edge, 200.0), edge)


def _default_policy(planner) -> RouterPolicy:
    return RouterPolicy.from_settings(AppArgs(series_dir="unused", initial_bandwidth_bps=1e6),
                                      planner.table.candidates, FLOOR)


def test_a_stall_costs_at_most_the_deadline_and_one_on_device_inference(planner):
    trace = parse_trace("0 2\n20 0\n35 2\n50 2\n")  # a 15-second tunnel
    candidates = planner.table.candidates
    policy = _default_policy(planner)
    router = replay_router(trace, planner, candidates, FLOOR, policy, FPS, RTT_MS)
    fallback = min((c for c in candidates if c.bytes_sent == 0 and c.accuracy >= FLOOR),
                   key=lambda c: c.head_ms)
    worst_head = max(c.head_ms for c in candidates)
    assert router.deadline_hits > 0
    assert router.latency_ms.max() <= worst_head + policy.deadline_ms + fallback.head_ms + 1e-6
    waited = replay_router(trace, planner, candidates, FLOOR, OLD, FPS, RTT_MS)
    assert waited.latency_ms.max() > 1000.0  # without a deadline, frames wait out the tunnel
    oracle = replay_oracle(trace, candidates, FLOOR, FPS, RTT_MS)
    for outcome in (router, waited):
        assert outcome.latency_ms.mean() >= oracle.latency_ms.mean() - 1e-6
        assert outcome.accuracy.min() >= FLOOR


def test_after_a_dip_the_router_offloads_again_within_3_s(planner):
    trace = parse_trace("0 2\n20 0.005\n35 2\n80 2\n")  # 15 s at 5 kbit/s
    candidates = planner.table.candidates
    oracle = replay_oracle(trace, candidates, FLOOR, FPS, RTT_MS)
    router = replay_router(trace, planner, candidates, FLOOR, _default_policy(planner), FPS, RTT_MS)
    delays = recovery_delays(router, oracle)
    assert delays and max(delays) <= 3.0
    assert not router.offloaded[int(25 * FPS):int(34 * FPS)].any()  # on the device in the dip
    old = replay_router(trace, planner, candidates, FLOOR, OLD, FPS, RTT_MS)
    assert router.latency_ms.mean() < old.latency_ms.mean()


def test_fixed_strategies_are_chosen_in_hindsight_and_never_beat_the_oracle(planner, tiny_store):
    trace = parse_trace("0 2\n10 0.05\n20 2\n")
    candidates = planner.table.candidates
    families = fixed_strategies(candidates, tiny_store.manifest)
    assert set(families) == {"a", "b", "d", "e"}
    assert all(c.bytes_sent == 0 for c in families["a"])
    assert all(c.split == "input" for c in families["b"])
    oracle = replay_oracle(trace, candidates, None, FPS, RTT_MS)
    for family in families.values():
        best = best_fixed(trace, family, FPS, RTT_MS)
        assert best.latency_ms.mean() >= oracle.latency_ms.mean() - 1e-6
        assert best.latency_ms.mean() <= min(replay_fixed(trace, c, FPS, RTT_MS).latency_ms.mean()
                                             for c in family) + 1e-6


def _outcome(latency_ms, offloaded, on_device_ms=None):
    import numpy as np

    from serve.trace_replay import Outcome
    n = len(latency_ms)
    return Outcome(np.arange(n) / FPS, np.array(latency_ms, float), ["x"] * n, np.ones(n),
                   np.array(offloaded, bool), on_device_ms=on_device_ms)


def test_a_return_to_offloading_counts_from_when_it_gains_more_than_the_margin():
    # the oracle offloads from request 5 at 38 ms (on the device: 39 ms), clearly from 15 at
    # 30 ms; the router offloads from request 17
    oracle = _outcome([39.0] * 5 + [38.0] * 10 + [30.0] * 25, [False] * 5 + [True] * 35, 39.0)
    router = _outcome([39.0] * 17 + [30.0] * 23, [False] * 17 + [True] * 23)
    assert recovery_delays(router, oracle, 3.0, margin=0.0) == pytest.approx([12 / FPS])
    assert recovery_delays(router, oracle, 3.0, margin=0.1) == pytest.approx([2 / FPS])
    # an oracle that never gains the margin has no return to count
    flat = _outcome([39.0] * 5 + [38.0] * 35, [False] * 5 + [True] * 35, 39.0)
    assert recovery_delays(router, flat, 3.0, margin=0.1) == []
    # an oracle that never ran on the device has none either, however its gain moves
    always = _outcome([38.0] * 10 + [20.0] * 30, [True] * 40, 39.0)
    assert recovery_delays(router, always, 3.0, margin=0.1) == []
    # a return with less than the hold left of the trace is not counted; one the router never
    # followed with more left is inf
    late = _outcome([39.0] * 30 + [20.0] * 10, [False] * 30 + [True] * 10, 39.0)
    on_device = _outcome([39.0] * 40, [False] * 40)
    assert recovery_delays(on_device, late, 3.0, margin=0.1) == []
    assert recovery_delays(on_device, oracle, 3.0, margin=0.1) == [float("inf")]


def test_the_oracle_knows_its_fastest_on_device_latency(planner):
    trace = parse_trace("0 2\n10 0.05\n20 2\n")
    candidates = planner.table.candidates
    oracle = replay_oracle(trace, candidates, FLOOR, FPS, RTT_MS)
    local = [c.head_ms + c.tail_ms for c in candidates if c.bytes_sent == 0 and c.accuracy >= FLOOR]
    assert oracle.on_device_ms == pytest.approx(min(local))
    assert oracle.latency_ms.max() <= oracle.on_device_ms + 1e-9
