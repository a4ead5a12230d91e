"""Bandwidth estimator: harmonic mean of samples, RTT and small-sample handling, reports, ageing,
the hysteresis band, and the per-link pool."""

import math

import pytest

from serve.bandwidth import BandwidthEstimator, EstimatorConfig, EstimatorPool


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(clock=None, **kwargs) -> BandwidthEstimator:
    return BandwidthEstimator(EstimatorConfig(**kwargs), clock or Clock())


def test_initial_estimate_until_a_sample_arrives():
    est = make(initial_bps=5e6)
    assert est.estimate_bps == est.raw_bps == 5e6
    assert math.isinf(est.age_s())
    assert est.snapshot()["age_s"] is None


def test_raw_estimate_is_the_byte_weighted_harmonic_mean():
    est = make(band=0.0, min_sample_bytes=0)
    est.add_transfer(1000, 0.008)  # 1 Mbit/s
    est.add_transfer(1000, 0.0008)  # 10 Mbit/s
    # 16000 bits over 8.8 ms: the slow sample dominates, unlike an arithmetic mean (5.5 Mbit/s).
    assert est.raw_bps == pytest.approx(16000 / 0.0088)
    rates = [1e6, 10e6]
    assert est.raw_bps == pytest.approx(len(rates) / sum(1 / r for r in rates))


def test_one_slow_sample_pulls_the_estimate_down_one_fast_sample_barely_lifts_it():
    est = make(window=8, band=0.0, min_sample_bytes=0)
    for _ in range(7):
        est.add_transfer(1000, 0.0008)  # 10 Mbit/s
    est.add_transfer(1000, 0.08)  # 100 kbit/s
    assert est.raw_bps < 1e6
    slow = make(window=8, band=0.0, min_sample_bytes=0)
    for _ in range(7):
        slow.add_transfer(1000, 0.08)
    slow.add_transfer(1000, 0.0008)
    assert slow.raw_bps < 120e3


def test_rtt_is_removed_and_small_or_latency_only_samples_are_ignored():
    est = make(band=0.0, min_sample_bytes=256)
    assert not est.add_transfer(100, 0.5)  # too small to measure throughput
    assert not est.add_transfer(1000, 0.010, rtt_ms=10.0)  # nothing left after the round trip
    assert est.add_transfer(1000, 0.018, rtt_ms=10.0)
    assert est.raw_bps == pytest.approx(8000 / 0.008)
    assert est.samples_ignored == 2 and est.samples_seen == 3


def test_exact_samples_bypass_the_size_threshold():
    est = make(band=0.0, min_sample_bytes=256)
    assert est.add_transfer(50, 0.004, exact=True)
    assert est.raw_bps == pytest.approx(400 / 0.004)


def test_client_report_counts_as_one_sample():
    est = make(band=0.0, report_bytes=4096)
    est.report(2e6)
    assert est.raw_bps == pytest.approx(2e6)
    est.add_transfer(4096, 4096 * 8 / 1e6)
    assert est.raw_bps == pytest.approx(2 / (1 / 2e6 + 1 / 1e6))


def test_old_samples_expire():
    clock = Clock()
    est = make(clock, band=0.0, max_age_s=10.0)
    est.add_transfer(1000, 0.008)
    clock.now += 5
    assert est.raw_bps == pytest.approx(1e6)
    assert est.age_s() == pytest.approx(5)
    clock.now += 6
    assert est.snapshot()["samples"] == 0
    assert est.raw_bps == est.estimate_bps == pytest.approx(1e6)  # falls back to the held value


def test_hysteresis_holds_the_estimate_inside_the_band():
    est = make(initial_bps=1e6, band=0.25, window=1, min_sample_bytes=0)
    for rate in (1.2e6, 0.85e6, 1.24e6, 0.81e6):
        est.add_transfer(1000, 8000 / rate)
        assert est.estimate_bps == 1e6, rate
    est.add_transfer(1000, 8000 / 1.3e6)
    assert est.estimate_bps == pytest.approx(1.3e6)
    est.add_transfer(1000, 8000 / 1.1e6)  # inside [1.04, 1.625] Mbit/s: held
    assert est.estimate_bps == pytest.approx(1.3e6)


@pytest.mark.parametrize("kwargs", [
    {"initial_bps": 0}, {"initial_bps": float("inf")}, {"window": 0}, {"band": -0.1},
    {"max_age_s": 0}, {"min_sample_bytes": -1}, {"report_bytes": 0},
])
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        EstimatorConfig(**kwargs)


@pytest.mark.parametrize("call", [
    lambda e: e.add_transfer(-1, 0.1), lambda e: e.add_transfer(10, -0.1),
    lambda e: e.add_transfer(10, float("nan")), lambda e: e.report(0), lambda e: e.report(1e13),
    lambda e: e.report(True),
])
def test_bad_samples_are_refused(call):
    with pytest.raises(ValueError):
        call(make())


def test_pool_keeps_one_estimator_per_link_and_drops_the_least_recent():
    pool = EstimatorPool(max_links=2)
    a = pool.get("a")
    assert pool.get("a") is a
    pool.get("b")
    pool.get("a")
    pool.get("c")
    assert "a" in pool and "c" in pool and "b" not in pool and len(pool) == 2
