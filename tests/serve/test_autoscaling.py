"""EdgeTail's work-in-flight signal: the meter learns each (variant, split)'s tail time, and the
policy asks for replicas in proportion to the work held."""

from types import SimpleNamespace

import pytest

from serve.autoscaling import (
    FRAMES_METRIC,
    WORK_METRIC,
    FramesInFlightPolicy,
    WorkInFlightPolicy,
    WorkMeter,
)
from serve.settings import AppArgs


def test_meter_counts_learned_cost_of_frames_in_flight():
    meter = WorkMeter(default_ms=1.0, smoothing=0.5)
    heavy, light = ("v", "input"), ("v", "pool5")
    cost = meter.start(heavy)
    assert cost == 1.0 and meter.in_flight_ms == 1.0
    meter.finish(heavy, cost, measured_ms=9.0)
    assert meter.in_flight_ms == 0.0 and meter.mean_ms[heavy] == 9.0
    meter.finish(heavy, meter.start(heavy), measured_ms=5.0)
    assert meter.mean_ms[heavy] == 7.0  # running mean
    a, b = meter.start(heavy), meter.start(light)
    assert meter.in_flight_ms == 8.0
    meter.finish(light, b, measured_ms=None)  # a refused frame teaches nothing
    assert light not in meter.mean_ms and meter.in_flight_ms == 7.0
    meter.finish(heavy, a, 7.0)
    assert meter.in_flight_ms == 0.0


def test_policy_scales_on_work_not_on_request_count():
    policy = WorkInFlightPolicy(target_work_ms=10.0)
    ctx = SimpleNamespace(current_num_replicas=2, target_num_replicas=2,
                          aggregated_metrics={WORK_METRIC: {"r1": 25.0, "r2": 15.0}})
    assert policy(ctx) == (4.0, {})
    idle = SimpleNamespace(current_num_replicas=2, target_num_replicas=2, aggregated_metrics={})
    assert policy(idle) == (2, {})
    with pytest.raises(ValueError):
        WorkInFlightPolicy(target_work_ms=0)


def test_frames_policy_counts_frames_not_open_sessions():
    policy = FramesInFlightPolicy(target_frames=2.0)
    # 200 idle sessions on r1 hold no frame: only the frames in flight count
    ctx = SimpleNamespace(current_num_replicas=2, target_num_replicas=2,
                          aggregated_metrics={FRAMES_METRIC: {"r1": 0.5, "r2": 6.5},
                                              "sessions": {"r1": 200.0, "r2": 3.0}})
    assert policy(ctx) == (3.5, {})
    idle = SimpleNamespace(current_num_replicas=1, target_num_replicas=1, aggregated_metrics=None)
    assert policy(idle) == (1, {})
    with pytest.raises(ValueError):
        FramesInFlightPolicy(target_frames=float("inf"))


def test_app_args_wire_the_policy_into_serves_autoscaling_config():
    import warnings

    from ray.serve.config import AutoscalingConfig

    config = AppArgs(series_dir="x", tail_autoscaling_signal="work", tail_target_work_ms=15.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        parsed = AutoscalingConfig(**config.tail_autoscaling_config())
    assert parsed.policy.policy_function == "serve.autoscaling:WorkInFlightPolicy"
    assert parsed.policy.policy_kwargs == {"target_work_ms": 15.0}
    default = AutoscalingConfig(**AppArgs(series_dir="x").tail_autoscaling_config())
    assert default.policy.policy_function == "serve.autoscaling:FramesInFlightPolicy"
    assert default.policy.policy_kwargs == {"target_frames": 2.0}
    requests = AppArgs(series_dir="x", tail_autoscaling_signal="requests").tail_autoscaling_config()
    assert "policy" not in requests
