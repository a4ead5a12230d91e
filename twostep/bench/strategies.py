"""The strategies `twostep bench` compares, and how each one is chosen with the cost model.

(a) all on the device, (b) raw input to the edge, (c) JPEG input to the edge, (d) the best split
of the unpruned model (Neurosurgeon-style: any of its split points, `input` and `output`
included), (e) the best split of the step-1 model, (f) twostep: the router's choice from the
whole series under the accuracy floor (asked from the edge's `/v1/plan` by the device).

A choice is an `Execution`: what the device does for one request. Several strategies may pick
the same execution at a grid point; it is then measured once and shared.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from pipeline.cost import Link, latency_breakdown
from pipeline.device_times import with_device_times
from pipeline.profiler import derive_profile
from pipeline.selection import (
    ON_DEVICE,
    Candidate,
    CandidateTable,
    baseline_candidates,
    candidates_from_series,
)
from pipeline.series import Manifest

STRATEGIES = {
    "a": "all on device",
    "b": "raw input to edge",
    "c": "JPEG input to edge",
    "d": "best split, unpruned",
    "e": "best split, step 1",
    "f": "twostep (router)",
}
# How the device runs a request: the whole model (`device`), its head then a frame to
# /v1/tail (`frame`), or the image itself to /v1/classify (`raw` pixels, `jpeg`).
MODES = ("device", "frame", "raw", "jpeg")


@dataclass(frozen=True)
class Execution:
    """One way the device serves a request: `mode` with a variant at a split."""

    mode: str
    variant: str
    split: str

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    @property
    def key(self) -> str:
        return f"{self.mode}:{self.variant}@{self.split}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LinkCosts:
    """The per-request cost of the serving path besides the payload, measured by calibration.

    `overhead_bytes` cross the link with every request that sends something (HTTP request line
    and headers, TCP/IP and Ethernet headers); `fixed_ms` is what a request costs at any
    bandwidth besides compute and transfer (HTTP parsing, the Serve hop to the tail).
    """

    overhead_bytes: float
    fixed_ms: float
    # The device's real time per call at speed 1 is `device_factor x profile + device_overhead_ms`
    # (fitted on two models): a single call pays costs a warm per-stage profile spreads thin.
    device_factor: float = 1.0
    device_overhead_ms: float = 0.0
    # A JPEG goes through /v1/classify (Router -> head -> tail, decoded on the edge): its fixed
    # time, measured the same way (None: as `fixed_ms`).
    jpeg_fixed_ms: float | None = None
    # The device's own per-request cost around its work (fetching the head from its cache,
    # reading the answer): CPU it spends at any slowdown, not slowed down in the emulation.
    device_request_ms: float = 0.0

    def rtt_ms(self, bandwidth_bps: float) -> float:
        """The cost model's per-request term at `bandwidth_bps` (its `Link.rtt_ms`)."""
        return self.fixed_ms + self.overhead_bytes * 8000.0 / bandwidth_bps

    def link(self, bandwidth_bps: float) -> Link:
        return Link(bandwidth_bps, self.rtt_ms(bandwidth_bps))

    def device_slowdown(self, slowdown: float) -> float:
        """The factor on the edge profile that predicts this device's time at `slowdown`."""
        return slowdown * self.device_factor

    def device_overhead(self, slowdown: float) -> float:
        """The fixed time per device call at `slowdown`, plus the request's own cost on it."""
        return slowdown * self.device_overhead_ms + self.device_request_ms


def execution_for(variant: str, split: str, strategy: str = "split") -> Execution:
    """The execution of a planner row (`strategy` as `pipeline.selection` names them)."""
    if strategy == "all-on-device" or split == "output":
        return Execution("device", variant, "output")
    if strategy == "raw-input":
        # the input as the device path sends it: a frame at `input`, one hop (as (b))
        return Execution("frame", variant, "input")
    if strategy == "jpeg-input":
        return Execution("jpeg", variant, "input")
    return Execution("frame", variant, split)


def device_candidates(manifest: Manifest, edge_profile: dict, slowdown: float, costs: LinkCosts,
                      device_ms: Mapping[tuple[str, str], float] | None = None,
                      whole_models: bool = False) -> list[Candidate]:
    """Every (variant, split) of the series with the cost model's device time at `slowdown`: the
    calibrated line on the edge profile, or the device's own measured time where `device_ms`
    ((variant, split) -> ms, `pipeline.device_times`) has one. With `whole_models`, also every
    variant run whole on the device where the series offers no `output` split for it (step-2
    variants), as the router plans (`serve.planner`)."""
    device_profile = derive_profile(edge_profile, costs.device_slowdown(slowdown))
    overhead = costs.device_overhead(slowdown)
    candidates = candidates_from_series(manifest, device_profile, edge_profile)
    if whole_models:
        candidates += [c for c in baseline_candidates(manifest, device_profile, edge_profile)
                       if c.strategy == ON_DEVICE]
    candidates = [dataclasses.replace(c, head_ms=c.head_ms + overhead) if c.head_ms > 0 else c
                  for c in candidates]
    return with_device_times(candidates, device_ms) if device_ms else candidates


def router_candidates(manifest: Manifest, edge_profile: dict, slowdown: float, costs: LinkCosts,
                      device_ms: Mapping[tuple[str, str], float] | None = None) -> list[Candidate]:
    """`device_candidates` as the router plans them: step-2 variants run whole included."""
    return device_candidates(manifest, edge_profile, slowdown, costs, device_ms, whole_models=True)


def _best(table: CandidateTable, link: Link) -> tuple[Execution, dict]:
    decision = table.select(link, accuracy_floor=0.0, top_k=1)
    best, b = decision.best, decision.breakdown
    return (execution_for(best.variant_id, best.split, best.strategy),
            {"device_ms": b.device_ms, "transfer_ms": b.transfer_ms, "edge_ms": b.edge_ms,
             "total_ms": b.total_ms, "bytes": best.bytes_sent})


def baseline_choices(
    manifest: Manifest, edge_profile: dict, slowdown: float, costs: LinkCosts, bandwidth_bps: float,
    raw_bytes: float, jpeg_bytes: float, jpeg_encode_ms: float,
    device_ms: Mapping[tuple[str, str], float] | None = None,
) -> dict[str, tuple[Execution, dict]]:
    """Strategies (a)-(e) at one grid point: the execution and the cost model's prediction.

    Args:
        manifest: the series manifest.
        edge_profile: this machine's profile of every variant (the edge).
        slowdown: the device runs this many times slower than the edge (times the calibrated
            `costs.device_factor` for the prediction).
        costs: the calibrated per-request costs of the serving path.
        raw_bytes: the raw pixels' size (unused since (b) sends the coded input frame).
        jpeg_bytes: payload of (c) (mean JPEG size).
        jpeg_encode_ms: the edge-speed time to JPEG-encode one image (the device pays it x slowdown).
        device_ms: the device's own measured time of some heads at this point (see
            `device_candidates`).
    """
    candidates = device_candidates(manifest, edge_profile, slowdown, costs, device_ms)
    overhead = costs.device_overhead(slowdown)
    link = costs.link(bandwidth_bps)
    base, step1 = manifest.base, manifest.step1_or_base

    def of(variant: str, split: str | None = None) -> CandidateTable:
        chosen = [c for c in candidates if c.variant_id == variant and split in (None, c.split)]
        return CandidateTable(chosen)

    whole = of(base, "output").candidates[0]
    edge_all = of(base, "input").candidates[0]

    jpeg_link = link if costs.jpeg_fixed_ms is None else dataclasses.replace(
        costs, fixed_ms=costs.jpeg_fixed_ms).link(bandwidth_bps)

    def predicted(head_ms: float, bytes_sent: float, tail_ms: float, on: Link = link) -> dict:
        b = latency_breakdown(head_ms, bytes_sent, tail_ms, on)
        return {"device_ms": b.device_ms, "transfer_ms": b.transfer_ms, "edge_ms": b.edge_ms,
                "total_ms": b.total_ms, "bytes": bytes_sent}

    return {
        "a": (Execution("device", base, "output"), predicted(whole.head_ms, 0, 0)),
        # the raw input as the device path sends it: an 8-bit lz4 frame at split `input`, one hop
        "b": (Execution("frame", base, "input"),
              predicted(edge_all.head_ms, edge_all.bytes_sent, edge_all.tail_ms)),
        "c": (Execution("jpeg", base, "input"),
              predicted(jpeg_encode_ms * costs.device_slowdown(slowdown) + overhead, jpeg_bytes,
                        edge_all.tail_ms, jpeg_link)),
        "d": _best(of(base), link),
        "e": _best(of(step1), link),
    }
