"""The typed arguments of the Serve application (`build_app(args)`), one frozen pydantic model.

`serve run serve.app:build_app series_dir=...`, the `args:` of a Serve config file and
`twostep serve` all end up here, so an unknown or bad argument fails with a message naming it
before anything starts. The replica counts and autoscaling values here are the defaults; a Serve
config file (`serve/serve.yaml`) can override them per deployment, as Ray's config files do.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.cost import MAX_BANDWIDTH_BPS, MAX_RTT_MS
from serve.autoscaling import POLICY_PATH
from serve.bandwidth import EstimatorConfig


class AppArgs(BaseModel):
    """Arguments of `build_app`. Times in ms unless named `_s`, rates in bit/s."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    app_name: str = Field("twostep", pattern=r"^[A-Za-z0-9_.-]{1,48}$",
                          description="the main app's name; the tail app is <app_name>-tail")
    series_dir: str = Field(description="model series: a directory where the app is built "
                            "(published to every node), a shared path, or a pyarrow.fs URI")
    # Default constraint of a request that gives none; with neither set, the floor is the best
    # accuracy in the series minus `accuracy_drop`.
    accuracy_floor: float | None = Field(None, ge=0.0, le=1.0)
    latency_budget_ms: float | None = Field(None, gt=0.0, le=3_600_000.0)
    accuracy_drop: float = Field(0.02, ge=0.0, le=1.0)
    # Cost model (see serve/profiles.py for the order in which profiles are looked for).
    edge_profile: str | None = None
    device_profile: str | None = None
    slowdown: float = Field(5.0, gt=0.0, le=1e6)
    ms_per_mmac: float | None = Field(None, ge=0.0)
    layer_ms: float = Field(0.0, ge=0.0)
    bytes_stat: Literal["mean", "p95"] = "mean"
    baselines: bool = True
    # Bandwidth estimate and hysteresis (serve/bandwidth.py, serve/planner.py).
    initial_bandwidth_bps: float = Field(10e6, gt=0.0, le=MAX_BANDWIDTH_BPS)
    rtt_ms: float = Field(0.0, ge=0.0, le=MAX_RTT_MS)
    # Also learn from the measured head -> tail handoff when the link is not emulated (for a
    # cluster where that hop crosses the real device-edge network; set rtt_ms to the hop's fixed
    # latency). Off by default: on one machine the hop measures Serve, not a link.
    measure_handoff: bool = False
    estimator_window: int = Field(8, ge=1, le=1024)
    estimator_max_age_s: float = Field(30.0, gt=0.0)
    estimator_band: float = Field(0.25, ge=0.0, le=10.0)
    min_sample_bytes: int = Field(256, ge=0)
    switch_margin: float = Field(0.1, ge=0.0, lt=1.0)
    probe_interval_s: float = Field(2.0, gt=0.0)
    probe_bytes: int = Field(4096, ge=1, le=1 << 24)
    # Link emulation of the head -> tail handoff (serve/link.py); None: not emulated.
    link_bandwidth_bps: float | None = Field(None, gt=0.0, le=MAX_BANDWIDTH_BPS)
    link_rtt_ms: float = Field(0.0, ge=0.0, le=MAX_RTT_MS)
    # Whether clients may change the emulated link at run time (PUT /v1/link). Off by default:
    # anyone who can reach the server could otherwise slow every request down.
    emulate_link: bool = False
    # Request limits.
    max_body_bytes: int = Field(4 << 20, ge=1024, le=1 << 30)
    max_image_pixels: int = Field(1 << 22, ge=1, le=1 << 28)
    max_batch: int = Field(64, ge=1, le=4096)
    # Deployments.
    head_replicas: int = Field(1, ge=1)
    tail_replicas: int | None = Field(None, ge=1, description="fixed count; None: autoscale")
    tail_min_replicas: int = Field(1, ge=0)
    tail_max_replicas: int = Field(2, ge=1)
    tail_target_ongoing_requests: float = Field(2.0, gt=0.0)
    tail_max_ongoing_requests: int = Field(4, ge=1)
    # Frames of the same (variant, split) that arrive within 2 ms share one tail call
    # (`@serve.batch`); 1 turns it off (bench/bench_load.py measures both).
    tail_batch_size: int = Field(1, ge=1, le=64)
    tail_upscale_delay_s: float = Field(2.0, ge=0.0)
    tail_downscale_delay_s: float = Field(10.0, ge=0.0)
    tail_look_back_period_s: float = Field(3.0, gt=0.0)
    tail_metrics_interval_s: float = Field(0.5, gt=0.0)
    # What EdgeTail scales on: requests in flight (Serve's default policy, with
    # tail_target_ongoing_requests) or measured tail work in flight (serve/autoscaling.py).
    tail_autoscaling_signal: Literal["requests", "work"] = "requests"
    tail_target_work_ms: float = Field(20.0, gt=0.0, le=3_600_000.0)
    replica_cpus: float = Field(0.1, gt=0.0, le=64.0)
    # DeviceHead's CPUs (default: replica_cpus); 0 lets it run on a node that offers no CPUs
    # to Ray, such as a head node started with --num-cpus 0.
    head_cpus: float | None = Field(None, ge=0.0, le=64.0)
    router_replicas: int = Field(1, ge=1, le=64)
    router_cpus: float = Field(0.1, gt=0.0, le=64.0)
    # What runs heads and tails: ONNX Runtime (graphs from `twostep export`, or exported when a
    # variant loads; 3-6x faster per call than eager PyTorch at batch 1 here) or eager PyTorch;
    # torch_threads is either runtime's threads per replica. Profile with the same runtime.
    runtime: Literal["onnxruntime", "torch"] = "onnxruntime"
    torch_threads: int = Field(1, ge=1, le=256)
    placement: Literal["auto", "local", "resources"] = "auto"
    retries: int = Field(3, ge=0, le=20)
    call_timeout_s: float = Field(30.0, gt=0.0, le=3600.0)
    health_check_period_s: float = Field(2.0, gt=0.0)

    @model_validator(mode="after")
    def _consistent(self) -> AppArgs:
        if self.accuracy_floor is not None and self.latency_budget_ms is not None:
            raise ValueError("give accuracy_floor or latency_budget_ms as the default, not both")
        if self.tail_batch_size > self.tail_max_ongoing_requests:
            raise ValueError(f"tail_batch_size ({self.tail_batch_size}) cannot exceed "
                             f"tail_max_ongoing_requests ({self.tail_max_ongoing_requests}): a "
                             "replica batches only the requests it holds")
        if self.tail_max_replicas < self.tail_min_replicas:
            raise ValueError(f"tail_max_replicas ({self.tail_max_replicas}) must be >= "
                             f"tail_min_replicas ({self.tail_min_replicas})")
        for name in ("slowdown", "initial_bandwidth_bps", "estimator_max_age_s", "probe_interval_s"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite")
        return self

    def estimator_config(self) -> EstimatorConfig:
        """The per-link bandwidth estimator's settings (shared by Routers and tails)."""
        return EstimatorConfig(self.initial_bandwidth_bps, self.estimator_window,
                               self.estimator_max_age_s, self.min_sample_bytes, self.estimator_band)

    def tail_autoscaling_config(self) -> dict | None:
        """The EdgeTail autoscaling config, or None when `tail_replicas` fixes the count."""
        if self.tail_replicas is not None:
            return None
        return {
            "min_replicas": self.tail_min_replicas,
            "initial_replicas": max(self.tail_min_replicas, 1),
            "max_replicas": self.tail_max_replicas,
            "target_ongoing_requests": self.tail_target_ongoing_requests,
            "upscale_delay_s": self.tail_upscale_delay_s,
            "downscale_delay_s": self.tail_downscale_delay_s,
            "look_back_period_s": self.tail_look_back_period_s,
            # Deprecated in Ray 2.60 but still how often handles push the queue lengths the
            # autoscaler reads (10 s by default): 0.5 s lets it react within a few seconds.
            "metrics_interval_s": self.tail_metrics_interval_s,
            **({"policy": {"policy_function": POLICY_PATH,
                           "policy_kwargs": {"target_work_ms": self.tail_target_work_ms}}}
               if self.tail_autoscaling_signal == "work" else {}),
        }
