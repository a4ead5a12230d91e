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

from pipeline.config import Bandwidth
from pipeline.cost import MAX_BANDWIDTH_BPS, MAX_RTT_MS
from pipeline.runtime import DEFAULT_RUNTIME, Runtime
from serve.autoscaling import FRAMES_POLICY_PATH, POLICY_PATH
from serve.bandwidth import (
    LINK_BAND,
    LINK_MAX_AGE_S,
    LINK_WINDOW,
    PROBE_BYTES,
    PROBE_INTERVAL_S,
    SWITCH_MARGIN,
    EstimatorConfig,
)


class AppArgs(BaseModel):
    """Arguments of `build_app`. Times in ms unless named `_s`, rates in bit/s."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    app_name: str = Field("twostep", pattern=r"^[A-Za-z0-9_.-]{1,48}$",
                          description="the main app's name; the tail app is <app_name>-tail")
    series_dir: str = Field(description="model series: a directory where the app is built "
                            "(published to every node), a shared path, or a pyarrow.fs URI")
    # With neither accuracy_floor nor latency_budget_ms, the floor is the best accuracy in the
    # series minus accuracy_drop.
    accuracy_floor: float | None = Field(None, ge=0.0, le=1.0, description="default accuracy "
                                         "floor of a request that gives none (a fraction)")
    latency_budget_ms: float | None = Field(None, gt=0.0, le=3_600_000.0, description="default "
                                            "latency budget of a request that gives none")
    accuracy_drop: float = Field(0.02, ge=0.0, le=1.0, description="without a default floor or "
                                 "budget: the floor is the best accuracy in the series minus this")
    # Cost model (see serve/profiles.py for the order in which profiles are looked for).
    edge_profile: str | None = Field(None, description="edge profile (default <series>/profile.json, "
                                     "else estimated from MACs at start-up)")
    device_profile: str | None = Field(None, description="device profile (default: the edge "
                                       "profile derived with slowdown)")
    slowdown: float = Field(5.0, gt=0.0, le=1e6, description="the device is this many times "
                            "slower than the edge")
    ms_per_mmac: float | None = Field(None, ge=0.0, description="estimate a missing profile at "
                                      "this many ms per million MACs")
    layer_ms: float = Field(0.0, ge=0.0, description="fixed ms per layer of an estimated profile")
    bytes_stat: Literal["mean", "p95"] = Field("mean", description="frame size the planner "
                                               "charges: the mean or the 95th percentile")
    baselines: bool = Field(True, description="also offer raw input, JPEG and all-on-device")
    # Bandwidth estimate and hysteresis (serve/bandwidth.py, serve/planner.py).
    initial_bandwidth_bps: Bandwidth = Field("10mbit", le=MAX_BANDWIDTH_BPS, description="uplink "
                                             "assumed before a link has been measured")
    rtt_ms: float = Field(0.0, ge=0.0, le=MAX_RTT_MS, description="round trip added to every "
                          "transfer estimate")
    measure_handoff: bool = Field(False, description="also learn the uplink from the measured "
                                  "head -> tail handoff when the link is not emulated (a cluster "
                                  "where that hop crosses the real device-edge network; set "
                                  "rtt_ms to its fixed latency); on one machine it measures Serve")
    # The link-following defaults were tuned on 34 HSDPA traces and reported on the other 34
    # (bench/bench_traces.py, docs/serve.md "Measured: real links").
    estimator_window: int = Field(LINK_WINDOW, ge=1, le=1024, description="uplink samples the estimate keeps")
    estimator_max_age_s: float = Field(LINK_MAX_AGE_S, gt=0.0, description="samples older than this "
                                       "are dropped (the held estimate stays until a new sample moves it)")
    estimator_band: float = Field(LINK_BAND, ge=0.0, le=10.0, description="the held estimate moves to the "
                                  "raw one when that leaves this relative band around it")
    min_sample_bytes: int = Field(256, ge=0, description="smaller transfers do not count as samples")
    switch_margin: float = Field(SWITCH_MARGIN, ge=0.0, lt=1.0, description="hysteresis: switch choice only "
                                 "when the new one is this much (relative) faster")
    probe_interval_s: float = Field(PROBE_INTERVAL_S, gt=0.0, description="seconds between bandwidth "
                                    "probes of a link that sends no frames")
    probe_bytes: int = Field(PROBE_BYTES, ge=1, le=1 << 24, description="bytes of a bandwidth probe (with "
                             "the interval: 16 kbit/s while the device runs everything)")
    link_bandwidth_bps: Bandwidth | None = Field(None, le=MAX_BANDWIDTH_BPS, description="emulate "
                                                 "the head -> tail handoff link at this rate "
                                                 "(1mbit, 250kbit, 2e6; none: not emulated)")
    link_rtt_ms: float = Field(0.0, ge=0.0, le=MAX_RTT_MS, description="round trip of the emulated link")
    link_trace: str | None = Field(None, description="replay this measured trace on the emulated "
                                   "link from start-up, looping ('time_s Mbit/s' lines or a "
                                   "mahimahi file; read where the Router runs)")
    link_trace_speed: float = Field(1.0, gt=0.0, le=1e4, description="replay the trace this many "
                                    "times faster")
    frame_deadline_ms: float | None = Field(None, gt=0.0, description="a frame not across the link "
                                            "after this long is given up and finished on the device "
                                            "(default: deadline_factor x the on-device time)")
    deadline_factor: float = Field(2.0, ge=0.0, le=1e3, description="the derived frame deadline "
                                   "in on-device times (0: no deadline)")
    emulate_link: bool = Field(False, description="let clients set the emulated link at run time "
                               "(PUT /v1/link); off by default: anyone reaching the server could "
                               "slow every request down")
    max_body_bytes: int = Field(4 << 20, ge=1024, le=1 << 30, description="largest request body")
    max_image_pixels: int = Field(1 << 22, ge=1, le=1 << 28, description="largest PNG/JPEG, "
                                  "checked from its header before decoding")
    max_batch: int = Field(64, ge=1, le=4096, description="largest batch of one request")
    head_replicas: int = Field(1, ge=1, description="DeviceHead replicas")
    tail_replicas: int | None = Field(None, ge=1, description="fixed EdgeTail replicas (none: autoscale)")
    tail_min_replicas: int = Field(1, ge=0, description="autoscaling minimum of EdgeTail")
    tail_max_replicas: int = Field(2, ge=1, description="autoscaling maximum of EdgeTail")
    tail_target_ongoing_requests: float = Field(2.0, gt=0.0, description="autoscaling target: "
                                                "requests in flight per EdgeTail replica")
    tail_max_ongoing_requests: int = Field(4, ge=1, description="requests one EdgeTail replica holds at most")
    tail_batch_size: int = Field(1, ge=1, le=64, description="frames of the same (variant, split) "
                                 "arriving within 2 ms share one tail call; 1 turns batching off")
    tail_upscale_delay_s: float = Field(2.0, ge=0.0, description="autoscaling upscale delay")
    tail_downscale_delay_s: float = Field(10.0, ge=0.0, description="autoscaling downscale delay")
    tail_look_back_period_s: float = Field(3.0, gt=0.0, description="autoscaling look-back period")
    tail_metrics_interval_s: float = Field(0.5, gt=0.0, description="how often handles report "
                                           "queue lengths to the autoscaler")
    tail_autoscaling_signal: Literal["frames", "requests", "work"] = Field(
        "frames", description="what EdgeTail scales on: frames in flight, over HTTP and sessions "
                              "alike (a session's connection is not load); requests in flight "
                              "(Serve's policy, which counts each open session as one); or "
                              "measured tail work in flight (serve/autoscaling.py)")
    tail_target_work_ms: float = Field(20.0, gt=0.0, le=3_600_000.0, description="with the work "
                                       "signal: target ms of tail work in flight per replica")
    stream_max_sessions: int = Field(256, ge=1, le=100_000, description="device sessions "
                                     "(WS /v1/tail/stream) one EdgeTail replica holds; more are "
                                     "refused with close code 1013 (try again later)")
    stream_max_fps: float = Field(1000.0, gt=0.0, le=1e6, description="frames per second one "
                                  "session may send; frames over it are answered 429")
    stream_idle_timeout_s: float = Field(120.0, gt=0.0, le=86_400.0, description="a session with "
                                         "no message for this long is closed (4410)")
    stream_handshake_timeout_s: float = Field(10.0, gt=0.0, le=600.0, description="a session "
                                              "must send its hello within this (else 4408)")
    stream_max_message_bytes: int = Field(1 << 20, ge=64, le=1 << 26, description="largest "
                                          "message of a session (else 1009)")
    token_file: str | None = Field(None, description="file holding a bearer token that device "
                                   "sessions must send (Authorization: Bearer ...); none: no "
                                   "authentication")
    replica_cpus: float = Field(0.1, gt=0.0, le=64.0, description="CPUs each replica reserves")
    head_cpus: float | None = Field(None, ge=0.0, le=64.0, description="DeviceHead's CPUs (none: "
                                    "replica_cpus); 0 lets it run on a node that offers Ray no CPUs")
    router_replicas: int = Field(1, ge=1, le=64, description="Router replicas (they share "
                                 "per-link state)")
    router_cpus: float = Field(0.1, gt=0.0, le=64.0, description="CPUs each Router replica reserves")
    runtime: Runtime = Field(
        DEFAULT_RUNTIME, description="what runs heads and tails: ONNX Runtime (graphs from "
                                   "`twostep export`, or exported when a variant loads) or eager "
                                   "PyTorch; profile with the same runtime")
    torch_threads: int = Field(1, ge=1, le=256, description="threads of either runtime per replica")
    placement: Literal["auto", "local", "resources"] = Field(
        "auto", description="local: any node; resources: DeviceHead on nodes with the `device` "
                            "resource, the rest on `edge` nodes; auto: resources where the "
                            "cluster has them")
    retries: int = Field(3, ge=0, le=20, description="retries of a failed replica call")
    call_timeout_s: float = Field(30.0, gt=0.0, le=3600.0, description="timeout of a replica call")
    health_check_period_s: float = Field(2.0, gt=0.0, description="Serve's health-check period")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "WARNING", description="level of the replicas' logs, on the terminal and in Ray's log "
                               "files (INFO: Serve's own lines too; access logs stay off)")

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
        for name in ("slowdown", "initial_bandwidth_bps", "estimator_max_age_s", "probe_interval_s",
                     "link_trace_speed", "frame_deadline_ms"):
            if getattr(self, name) is not None and not math.isfinite(getattr(self, name)):
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
            **({"policy": {"policy_function": FRAMES_POLICY_PATH,
                           "policy_kwargs": {"target_frames": self.tail_target_ongoing_requests}}}
               if self.tail_autoscaling_signal == "frames" else {}),
        }

    def stream_limits(self) -> dict:
        """The EdgeTail's session limits (`serve.stream.StreamLimits` fields), with the token
        read from `token_file` here: replicas on other nodes cannot open it."""
        from pipeline.session_wire import read_token

        token = read_token(self.token_file) if self.token_file is not None else None
        return {"max_sessions": self.stream_max_sessions, "max_fps": self.stream_max_fps,
                "idle_timeout_s": self.stream_idle_timeout_s,
                "handshake_timeout_s": self.stream_handshake_timeout_s,
                "max_message_bytes": self.stream_max_message_bytes, "token": token}


def tail_app_name(app_name: str) -> str:
    """The tail application's name beside the main app `app_name` (EdgeTail deploys there)."""
    return f"{app_name}-tail"
