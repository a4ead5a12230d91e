"""A measured link trace replayed through the router's decision loop, beside the oracle and the
fixed strategies, in the cost model's time (no processes: thousands of trace-seconds a second).

One device sends `fps` requests a second over the trace's link. Each request is planned as the
router plans it: `serve.planner.Planner.decide` (its hysteresis included) at the held estimate of
`serve.bandwidth.BandwidthEstimator`, which has learnt from every transfer finished before the
request. The head runs (`head_ms`), the frame waits for the link (first in, first out, behind
earlier frames and probes) and crosses it at the trace's rate integrated over time
(`pipeline.traces.Trace.arrival`), then one round trip and the tail. The router learns (bytes,
time on the wire) when the frame has arrived. While its choice sends nothing it probes: a
`probe_bytes` transfer every `probe_interval_s` that the estimate had no sample. A frame not
arrived within `deadline_ms` of going on the link is finished on the device by the fastest
on-device candidate that meets the floor (its bytes still occupy the link: TCP cannot take them
back). The oracle picks, for every request, the candidate with the lowest latency on the true
trace (an empty link); each fixed strategy runs one candidate for the whole trace.

This is the model the live replay (`twostep bench --trace`) is checked against, and what the
estimator's window, band and probe were tuned on (`bench/bench_traces.py`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.cost import Link
from pipeline.selection import Candidate
from pipeline.series import Manifest
from pipeline.traces import Trace
from serve.bandwidth import (
    LINK_BAND,
    LINK_MAX_AGE_S,
    LINK_WINDOW,
    PROBE_BYTES,
    PROBE_INTERVAL_S,
    SWITCH_MARGIN,
    BandwidthEstimator,
    EstimatorConfig,
)
from serve.deadline import censored_seconds, deadline_ms, fallback_candidate
from serve.planner import Planner
from serve.settings import AppArgs

OVERHEAD_BYTES = 66  # TCP/IP/Ethernet headers of one segment, on every transfer


@dataclass(frozen=True)
class RouterPolicy:
    """What the router's link-following is made of (the values tuned on traces)."""

    estimator: EstimatorConfig = EstimatorConfig(window=LINK_WINDOW, max_age_s=LINK_MAX_AGE_S, band=LINK_BAND)
    probe_bytes: int = PROBE_BYTES
    probe_interval_s: float = PROBE_INTERVAL_S
    deadline_ms: float | None = None

    @classmethod
    def from_settings(cls, args: AppArgs, candidates: Sequence[Candidate],
                      floor: float | None) -> RouterPolicy:
        """The policy a Router started with `args` follows for requests under `floor`."""
        fallback = fallback_candidate(candidates, floor)
        return cls(args.estimator_config(), args.probe_bytes, args.probe_interval_s,
                   deadline_ms(fallback, args.frame_deadline_ms, args.deadline_factor))


@dataclass
class Outcome:
    """Per request: when it started, the latency, bytes sent, the candidate, and flags."""

    starts_s: np.ndarray
    latency_ms: np.ndarray
    labels: list[str]
    accuracy: np.ndarray
    offloaded: np.ndarray
    deadline_hits: int = 0
    switches: int = 0
    probes: int = 0
    estimates_bps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    on_device_ms: float | None = None  # the oracle's: its fastest feasible on-device latency

    def summary(self, duration_s: float) -> dict:
        shares: dict[str, float] = {}
        for label in self.labels:
            shares[label] = shares.get(label, 0.0) + 1.0 / len(self.labels)
        return {"requests": len(self.labels), "mean_ms": float(self.latency_ms.mean()),
                "p95_ms": float(np.percentile(self.latency_ms, 95)),
                "max_ms": float(self.latency_ms.max()), "accuracy": float(self.accuracy.mean()),
                "switches_per_min": self.switches / (duration_s / 60.0), "deadline_hits": self.deadline_hits,
                "probes": self.probes,
                "shares": dict(sorted(shares.items(), key=lambda kv: -kv[1]))}


def _label(candidate: Candidate) -> str:
    return f"{candidate.variant_id}@{candidate.split}"


class _Link:
    """The trace's link, first in first out."""

    def __init__(self, trace: Trace, overhead_bytes: int):
        self.trace, self.overhead_bytes, self.free_at = trace, overhead_bytes, 0.0

    def send(self, ready_s: float, nbytes: float) -> tuple[float, float]:
        """(time it went on the wire, time it had arrived)."""
        start = max(ready_s, self.free_at)
        self.free_at = self.trace.arrival(start, nbytes + self.overhead_bytes)
        return start, self.free_at


def feasible(candidates: Sequence[Candidate], floor: float | None) -> list[Candidate]:
    chosen = [c for c in candidates if floor is None or c.accuracy >= floor]
    if not chosen:
        raise ValueError(f"no candidate meets the accuracy floor {floor}")
    return chosen


def replay_router(trace: Trace, planner: Planner, candidates: Sequence[Candidate],
                  floor: float | None, policy: RouterPolicy, fps: float = 5.0, rtt_ms: float = 0.0,
                  duration_s: float | None = None, overhead_bytes: int = OVERHEAD_BYTES) -> Outcome:
    """The router over `trace` (see the module docstring); `candidates` (those `planner` plans
    with for this device) give the on-device fallback of a deadline."""
    duration = trace.duration_s if duration_s is None else duration_s
    now = [0.0]
    estimator = BandwidthEstimator(policy.estimator, clock=lambda: now[0])
    link = _Link(trace, overhead_bytes)
    fallback = fallback_candidate(candidates, floor)
    learnt: list[tuple[float, int, float]] = []  # (arrived at, bytes, seconds on the wire)
    probe_until = -1.0
    decisions: dict[tuple, tuple[Candidate, bool]] = {}
    previous: Candidate | None = None
    count = int(duration * fps)
    starts = np.arange(count) / fps
    latency, accuracy = np.zeros(count), np.zeros(count)
    offloaded, estimates = np.zeros(count, bool), np.zeros(count)
    labels: list[str] = []
    hits = switches = probes = 0
    rtt_s = rtt_ms / 1000.0
    for i, t in enumerate(starts):
        while learnt and learnt[0][0] <= t:
            at, nbytes, seconds = heapq.heappop(learnt)
            now[0] = at
            estimator.add_transfer(nbytes, seconds, exact=True)
        now[0] = t
        estimate = estimator.estimate_bps
        key = (estimate, previous)
        if key not in decisions:
            choice = planner.decide(previous, Link(estimate, rtt_ms), floor)
            decisions[key] = (choice.candidate, choice.switched)
        candidate, switched = decisions[key]
        switches += switched
        previous = candidate
        estimates[i] = estimate
        if candidate.bytes_sent == 0:
            latency[i] = candidate.head_ms + candidate.tail_ms
            if estimator.age_s() >= policy.probe_interval_s and t >= probe_until:
                sent, arrived = link.send(t, policy.probe_bytes)
                heapq.heappush(learnt, (arrived + rtt_s, policy.probe_bytes, arrived - sent))
                probe_until, probes = arrived + rtt_s, probes + 1
        else:
            ready = t + candidate.head_ms / 1000.0
            sent, arrived = link.send(ready, candidate.bytes_sent)
            nbytes = int(candidate.bytes_sent)
            total = (arrived - t + rtt_s) * 1000.0 + candidate.tail_ms
            deadline_s = None if policy.deadline_ms is None else policy.deadline_ms / 1000.0
            if deadline_s is not None and fallback is not None and arrived + rtt_s - ready > deadline_s:
                # given up: the device finishes it; the link is known to be slower than this
                hits += 1
                total = given_up_ms(candidate, policy.deadline_ms, fallback)
                given_up = censored_seconds(deadline_s, sent - ready)
                heapq.heappush(learnt, (ready + deadline_s, nbytes, given_up))
                candidate = fallback
            else:
                heapq.heappush(learnt, (arrived + rtt_s, nbytes, arrived - sent))
            latency[i] = total
        offloaded[i] = candidate.bytes_sent > 0
        accuracy[i] = candidate.accuracy
        labels.append(_label(candidate))
    return Outcome(starts, latency, labels, accuracy, offloaded, hits, switches, probes, estimates)


def given_up_ms(original: Candidate, deadline_ms: float, fallback: Candidate) -> float:
    """A request whose frame missed its deadline: its head ran, the frame waited out the
    deadline, then the device ran the fallback."""
    return original.head_ms + deadline_ms + fallback.head_ms


def latency_on_trace(trace: Trace, starts: np.ndarray, candidate: Candidate, rtt_ms: float,
                     overhead_bytes: int = OVERHEAD_BYTES) -> np.ndarray:
    """Each request's latency (started at `starts`, s) with `candidate` alone on an empty link."""
    if candidate.bytes_sent == 0:
        return np.full(len(starts), candidate.head_ms + candidate.tail_ms)
    ready = starts + candidate.head_ms / 1000.0
    nbytes = candidate.bytes_sent + overhead_bytes
    arrived = np.array([trace.arrival(r, nbytes) for r in ready])
    return (arrived - starts) * 1000.0 + rtt_ms + candidate.tail_ms


def replay_fixed(trace: Trace, candidate: Candidate, fps: float = 5.0, rtt_ms: float = 0.0,
                 duration_s: float | None = None, overhead_bytes: int = OVERHEAD_BYTES) -> Outcome:
    """One candidate for every request, frames queued first in first out."""
    duration = trace.duration_s if duration_s is None else duration_s
    starts = np.arange(int(duration * fps)) / fps
    link = _Link(trace, overhead_bytes)
    latency = np.zeros(len(starts))
    for i, t in enumerate(starts):
        if candidate.bytes_sent == 0:
            latency[i] = candidate.head_ms + candidate.tail_ms
            continue
        _, arrived = link.send(t + candidate.head_ms / 1000.0, candidate.bytes_sent)
        latency[i] = (arrived - t) * 1000.0 + rtt_ms + candidate.tail_ms
    n = len(starts)
    return Outcome(starts, latency, [_label(candidate)] * n, np.full(n, candidate.accuracy),
                   np.full(n, candidate.bytes_sent > 0))


def replay_oracle(trace: Trace, candidates: Sequence[Candidate], floor: float | None, fps: float = 5.0,
                  rtt_ms: float = 0.0, duration_s: float | None = None,
                  overhead_bytes: int = OVERHEAD_BYTES, starts: np.ndarray | None = None) -> Outcome:
    """Per request, the feasible candidate with the lowest latency on the true trace; requests
    every 1/`fps` s, or at `starts` (s: the moments a live replay sent its requests)."""
    if starts is None:
        duration = trace.duration_s if duration_s is None else duration_s
        starts = np.arange(int(duration * fps)) / fps
    options = _distinct(feasible(candidates, floor))
    table = np.stack([latency_on_trace(trace, starts, c, rtt_ms, overhead_bytes) for c in options])
    best = table.argmin(axis=0)
    chosen = [options[b] for b in best]
    local = [c.head_ms + c.tail_ms for c in options if c.bytes_sent == 0]
    return Outcome(starts, table[best, np.arange(len(starts))], [_label(c) for c in chosen],
                   np.array([c.accuracy for c in chosen]), np.array([c.bytes_sent > 0 for c in chosen]),
                   switches=int(np.count_nonzero(np.diff(best))), on_device_ms=min(local, default=None))


def _distinct(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Drop candidates another one beats on every count (fewer bytes, head and tail time)."""
    kept: list[Candidate] = []
    for c in sorted(candidates, key=lambda c: (c.bytes_sent, c.head_ms, c.tail_ms)):
        if not any(k.bytes_sent <= c.bytes_sent and k.head_ms <= c.head_ms and k.tail_ms <= c.tail_ms
                   for k in kept):
            kept.append(c)
    return kept


def recovery_delays(router: Outcome, oracle: Outcome, hold_s: float = 3.0,
                    margin: float = SWITCH_MARGIN) -> list[float]:
    """Seconds from each moment the link comes back to the router's first offloaded request
    after it (inf: none before the trace ends).

    The link comes back in a stretch where the oracle, having run on the device, offloads
    again: from the first request of the stretch after which it offloads for `hold_s` more than
    `margin` faster than the device (with the router's hysteresis as `margin`, the default: a
    router that knew the true rate would switch then, as it keeps a choice within (1 + margin)
    of the best; `margin=0`: any gain). A stretch that never gains that much for `hold_s`, or
    ends with the trace before it did, is no return; nor is one the router was already
    offloading into."""
    starts, oracle_on, router_on = oracle.starts_s, oracle.offloaded, router.offloaded
    if len(starts) < 2:
        return []
    step = starts[1] - starts[0]
    hold = max(1, int(round(hold_s / step)))
    clear = oracle_on.copy()
    if margin > 0 and oracle.on_device_ms is not None:
        clear &= oracle.latency_ms * (1.0 + margin) < oracle.on_device_ms
    delays = []
    for i in np.flatnonzero(oracle_on[1:] & ~oracle_on[:-1]) + 1:
        if router_on[i - 1]:
            continue
        off = np.flatnonzero(~oracle_on[i:])
        end = i + int(off[0]) if len(off) else len(starts)
        if end - i < hold:
            continue
        held = np.lib.stride_tricks.sliding_window_view(clear[i:end], hold).all(axis=1)
        if not held.any():
            continue
        back = i + int(np.argmax(held))
        later = np.flatnonzero(router_on[i:])
        delays.append(max(0.0, float((i + later[0] - back) * step)) if len(later) else math.inf)
    return delays


def fixed_strategies(candidates: Sequence[Candidate], manifest: Manifest) -> dict[str, list[Candidate]]:
    """The paper's fixed strategies as candidate families; each one runs, over a trace, the
    member that is best in hindsight: (a) all on the device, (b) raw input to the edge (the
    unpruned model), (d) one split of the unpruned model, (e) one split of the step-1 model.
    ((c), JPEG input, needs measured JPEG sizes: `twostep bench` has it.)"""
    base, step1 = manifest.base, manifest.step1_or_base
    of = {"a": [c for c in candidates if c.variant_id == base and c.bytes_sent == 0],
          "b": [c for c in candidates if c.variant_id == base and c.split == "input"],
          "d": [c for c in candidates if c.variant_id == base],
          "e": [c for c in candidates if c.variant_id == step1]}
    return {k: v for k, v in of.items() if v}


def best_fixed(trace: Trace, family: Sequence[Candidate], fps: float, rtt_ms: float,
               duration_s: float | None = None, overhead_bytes: int = OVERHEAD_BYTES) -> Outcome:
    """The member of `family` with the lowest mean latency over the trace, in hindsight."""
    outcomes = [replay_fixed(trace, c, fps, rtt_ms, duration_s, overhead_bytes) for c in _distinct(family)]
    return min(outcomes, key=lambda o: o.latency_ms.mean())
