"""The settings of `twostep bench`: one typed model, the source of the verb's flags (importable
without torch, so `twostep bench --help` starts fast)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from pipeline.config import Bandwidth, CommaList, ConfigModel
from pipeline.runtime import DEFAULT_RUNTIME, Runtime
from serve.process.ingress import Ingress


class BenchConfig(ConfigModel):
    """What `twostep bench` runs (each field is also a flag of the verb)."""

    series: str = Field("runs/demo/series", description="model series directory (made by "
                        "`twostep demo` or `twostep prune`)")
    out: str = Field("runs/bench", description="results directory")
    bandwidths: CommaList(Bandwidth) = Field(
        ("100kbit", "250kbit", "500kbit", "1mbit", "2mbit", "5mbit", "10mbit", "100mbit"),
        min_length=1,
        description="uplink rates of the grid: bit/s, or with a unit (250kbit, 1mbit); "
                    "comma-separated on the command line")
    # The device is emulated by sleeping after real work: it cannot be faster than this CPU.
    slowdowns: CommaList(Annotated[float, Field(ge=1.0, le=1000.0)]) = Field(
        (1.0, 5.0, 10.0), min_length=1,
        description="device = this many times slower than the edge, each in [1, 1000]")
    requests: int = Field(20, ge=1, le=10_000, description="requests per strategy and grid point")
    max_loss: float = Field(0.01, ge=0.0, le=1.0, description="twostep's accuracy floor: the "
                            "unpruned model's test accuracy minus this")
    link: Literal["auto", "shaped", "emulated"] = Field(
        "auto", description="shaped: network namespaces + tc (root); emulated: sleeps; auto: "
                            "shaped where permitted")
    jpeg_quality: int = Field(90, ge=1, le=95, description="JPEG quality of strategy (c)")
    calibration_requests: int = Field(60, ge=1, le=1000, description="requests of the "
                                      "serving-path calibration")
    accuracy_images: int = Field(2000, ge=1, le=1_000_000, description="test images of the "
                                 "JPEG accuracy check")
    startup_timeout_s: float = Field(300.0, gt=0.0, le=3600.0, description="seconds the edge "
                                     "and device processes may take to start")
    ingress: Ingress = Field(
        "auto", description="the edge's HTTP ingress: HAProxy where available")
    runtime: Runtime = Field(
        DEFAULT_RUNTIME, description="what runs heads and tails on the device and the edge, and "
                                   "what the edge profile times")
    transport: Literal["stream", "http"] = Field(
        "stream", description="how the device sends frames and raw inputs: over one device "
                              "session (WS /v1/tail/stream; the raw input as the base's frame at "
                              "split input) or as one HTTP request each; JPEG input always goes "
                              "over HTTP (/v1/classify)")
    profile_idle_ms: float = Field(5.0, ge=0.0, le=10_000.0, description="the edge profile idles "
                                   "this long before each timed call, as between the "
                                   "benchmark's requests (a call after a gap is slower)")

    trace: str | None = Field(None, description="replay this bandwidth trace on the shaped link "
                              "instead of the grid (`time_s Mbit/s` lines, or mahimahi's packet "
                              "times): the device classifies test images at --fps, planning itself")
    trace_speed: float = Field(1.0, ge=1e-4, le=1e4, description="play the trace this many times faster")
    trace_start_s: float = Field(0.0, ge=0.0, description="replay from this second of the trace")
    trace_seconds: float | None = Field(None, gt=0.0, le=86_400.0, description="replay this many "
                                        "seconds of it (before the speed-up; default: to its end)")
    fps: float = Field(5.0, gt=0.0, le=100.0, description="frames a second the device classifies "
                       "during a trace replay")
    deadline_factor: float = Field(2.0, ge=0.0, le=1000.0, description="during a trace replay, a "
                                   "frame unanswered after this x the on-device fallback's time is "
                                   "given up and run on the device (0: no deadline)")
    trace_grid: bool = Field(False, description="with --trace, also run the bandwidth grid (one "
                             "edge for both)")

    @property
    def bandwidths_mbit(self) -> tuple[float, ...]:
        return tuple(bps / 1e6 for bps in self.bandwidths)
