"""EdgeTail's autoscaling signal: frames in flight (the default), requests in flight (Serve's
own policy) or work in flight.

Frames differ in cost: one at an early split leaves most of the network to the tail, one at a
late split almost nothing. Counting requests treats them alike. `WorkInFlightPolicy` scales on
the tail's *work* in flight instead: each replica reports (`record_autoscaling_stats`) the sum,
over the frames it holds, of the tail time it has measured for that (variant, split), and the
policy asks for `total work in flight / target_work_ms` replicas. Serve wraps any custom policy
with the deployment's bounds and up/down-scale delays, as for its own.
`bench/bench_load.py --mixed` measures both on a mix of heavy and light frames.
"""

from __future__ import annotations

import math
from typing import Any

WORK_METRIC = "work_in_flight_ms"
FRAMES_METRIC = "frames_in_flight"
POLICY_PATH = "serve.autoscaling:WorkInFlightPolicy"
FRAMES_POLICY_PATH = "serve.autoscaling:FramesInFlightPolicy"


def _positive(name: str, value: Any) -> float:
    if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def _replicas_for(ctx: Any, metric: str, target: float) -> tuple[float, dict]:
    """The sum over replicas of `metric` (as Serve aggregated it) / `target`; the current
    target while no replica has reported."""
    per_replica = (ctx.aggregated_metrics or {}).get(metric) or {}
    if ctx.current_num_replicas == 0 or not per_replica:
        return ctx.target_num_replicas, {}
    return sum(per_replica.values()) / target, {}


class WorkInFlightPolicy:
    """Desired replicas = total measured tail work in flight / `target_work_ms`."""

    def __init__(self, target_work_ms: float = 20.0):
        self.target_work_ms = _positive("target_work_ms", target_work_ms)

    def __call__(self, ctx: Any) -> tuple[float, dict]:
        return _replicas_for(ctx, WORK_METRIC, self.target_work_ms)


class FramesInFlightPolicy:
    """Desired replicas = total frames in flight / `target_frames`: Serve's request count, but
    counting the frames a device session sends rather than its connection (an open WebSocket is
    one "ongoing request" to Serve for its whole life, busy or idle)."""

    def __init__(self, target_frames: float = 2.0):
        self.target_frames = _positive("target_frames", target_frames)

    def __call__(self, ctx: Any) -> tuple[float, dict]:
        return _replicas_for(ctx, FRAMES_METRIC, self.target_frames)


class WorkMeter:
    """Per replica: the measured tail time per (variant, split) (running mean) and the sum of
    it over the frames in flight."""

    def __init__(self, default_ms: float = 1.0, smoothing: float = 0.2):
        self.default_ms = default_ms
        self.smoothing = smoothing
        self.mean_ms: dict[tuple[str, str], float] = {}
        self.in_flight_ms = 0.0

    def start(self, key: tuple[str, str], frames: int = 1) -> float:
        cost = self.mean_ms.get(key, self.default_ms) * frames
        self.in_flight_ms += cost
        return cost

    def finish(self, key: tuple[str, str], cost: float, measured_ms: float | None) -> None:
        self.in_flight_ms = max(0.0, self.in_flight_ms - cost)
        if measured_ms is not None:
            previous = self.mean_ms.get(key)
            self.mean_ms[key] = measured_ms if previous is None else \
                previous + self.smoothing * (measured_ms - previous)
