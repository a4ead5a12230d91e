"""`twostep bench --trace`: a measured bandwidth trace replayed on the shaped link while the
device classifies test images, planning itself; set against the oracle and the fixed strategies.

The orchestrator steps the link's rate (`tc`, both directions) at each step of the trace; the
device process (`twostep.bench.device_trace`) starts its frame clock at the same moment. Every
request's choice is then priced in the cost model on the true trace (the calibrated per-request
bytes and fixed time, the device's own head times), as are the oracle (per request, the best
feasible choice in hindsight) and the fixed strategies (a)-(e) (each the best member of its
family over the whole trace, in hindsight): one scale for all. The measured wall time of every
request is reported beside it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.selection import JPEG_INPUT, RAW_INPUT, Candidate
from pipeline.series import Manifest
from pipeline.traces import Trace, load_trace
from serve.deadline import fallback_candidate
from serve.trace_replay import best_fixed, feasible, fixed_strategies, recovery_delays, replay_oracle
from twostep.bench.strategies import LinkCosts, router_candidates
from twostep.trace_live import price, segment

Log = Callable[[str], None]
MIN_STEP_S = 0.05  # tc changes the rate in a few ms: steps shorter than this are not replayed
START_DELAY_S = 2.0  # both clocks start this long after the job is sent
RECOVERY_HOLD_S = 3.0
TIE = 1e-3  # twostep within 0.1% of a fixed strategy is not "lower"


def bench_trace(config) -> Trace:
    """The trace `config` names: its segment, sped up; ValueError (naming the file) if unusable."""
    trace = load_trace(config.trace)
    seconds = config.trace_seconds if config.trace_seconds is not None \
        else trace.duration_s - config.trace_start_s
    if config.trace_start_s or config.trace_seconds is not None:
        trace = segment(trace, config.trace_start_s, seconds)
    trace = trace.sped_up(config.trace_speed)
    shortest = float(np.min(np.diff(np.r_[trace.starts_s, trace.duration_s])))
    if shortest < MIN_STEP_S:
        raise ValueError(f"{config.trace}: at speed {config.trace_speed:g} a step lasts "
                         f"{shortest * 1000:.0f} ms; the shaped link follows steps of "
                         f">= {MIN_STEP_S * 1000:.0f} ms (lower --trace-speed)")
    if trace.duration_s * config.fps < 10:
        raise ValueError(f"{config.trace}: {trace.duration_s:g} s at {config.fps:g} frames/s is "
                         "fewer than 10 requests")
    return trace


def calibration_bandwidth_mbit(trace: Trace) -> float:
    """The rate the device's calls are fitted at (the idle gap before a request depends on it):
    the trace's time-weighted median."""
    ends = np.r_[trace.starts_s[1:], trace.duration_s]
    order = np.argsort(trace.rates_bps)
    weights = (ends - trace.starts_s)[order]
    median = trace.rates_bps[order][np.searchsorted(np.cumsum(weights), weights.sum() / 2)]
    return float(median) / 1e6


class RateStepper(threading.Thread):
    """Sets the shaped link's rate at every step of `trace`, the clock starting at `start_at`
    (time.time()); records how late each change took effect."""

    def __init__(self, set_rate: Callable[[float], None], trace: Trace, start_at: float):
        super().__init__(daemon=True)
        self.set_rate, self.trace, self.start_at = set_rate, trace, start_at
        self.lags_ms: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        for start, rate in self.trace.steps():
            if self.stop.wait(max(0.0, self.start_at + start - time.time())):
                return
            self.set_rate(rate)
            self.lags_ms.append((time.time() - self.start_at - start) * 1000.0)


def trace_candidates(manifest: Manifest, edge_profile: dict, slowdown: float, costs: LinkCosts,
                     device_ms: dict, jpeg: dict) -> list[Candidate]:
    """What the device can do per request at `slowdown`, as the cost model prices it: every
    frame and on-device choice of the series (the device's own times where it has them), plus
    (c), the JPEG upload (its extra serving time over a frame's folded into its tail)."""
    # the whole model of a variant that offers no `output` split runs on the device as well
    candidates = [c for c in router_candidates(manifest, edge_profile, slowdown, costs, device_ms)
                  if c.strategy not in (RAW_INPUT, JPEG_INPUT)]
    base = manifest.base
    edge_all = next(c for c in candidates if c.variant_id == base and c.split == "input")
    jpeg_fixed = costs.jpeg_fixed_ms if costs.jpeg_fixed_ms is not None else costs.fixed_ms
    return candidates + [Candidate(
        base, "input", jpeg["accuracy"], jpeg["bytes_mean"],
        jpeg["encode_ms"] * costs.device_slowdown(slowdown) + costs.device_overhead(slowdown),
        edge_all.tail_ms + jpeg_fixed - costs.fixed_ms, JPEG_INPUT)]


def replay_one(device, set_rate: Callable[[float], None], trace: Trace, config, slowdown: float,
               manifest: Manifest, edge_profile: dict, costs: LinkCosts, device_ms: dict, jpeg: dict,
               floor: float, log: Log) -> dict:
    """One replay at `slowdown` and its comparison (see the module docstring)."""
    candidates = trace_candidates(manifest, edge_profile, slowdown, costs, device_ms, jpeg)
    frames = [c for c in candidates if c.strategy != JPEG_INPUT]
    fallback = fallback_candidate(frames, floor)
    # the device knows its time for every whole model it may fall back on (its deadline's base)
    timed = dict(device_ms) | {(c.variant_id, c.split): c.head_ms for c in frames
                               if c.bytes_sent == 0 and c.accuracy >= floor}
    start_at = time.time() + START_DELAY_S + 1.0
    job = {"kind": "trace", "name": trace.name, "starts_s": trace.starts_s.tolist(),
           "rates_bps": trace.rates_bps.tolist(), "duration_s": trace.duration_s,
           "slowdown": slowdown, "fps": config.fps, "accuracy_floor": floor, "start_at": start_at,
           "deadline_factor": config.deadline_factor, "rtt_ms": costs.fixed_ms,
           "device_slowdown": costs.device_slowdown(slowdown),
           "device_overhead_ms": costs.device_overhead(slowdown),
           "device_ms": [[v, s, ms] for (v, s), ms in timed.items()]}
    stepper = RateStepper(set_rate, trace, start_at)
    stepper.start()
    try:
        result = device.ask(job, timeout_s=trace.duration_s * 4 + 600)
    finally:
        stepper.stop.set()
        stepper.join()
        set_rate(1e9)
    rows = result["rows"]
    rtt, overhead = costs.fixed_ms, costs.overhead_bytes
    live = price(rows, trace, frames, rtt, overhead)
    seconds = len(rows) / config.fps
    oracle = replay_oracle(trace, frames, floor, rtt_ms=rtt, overhead_bytes=overhead, starts=live.starts_s)
    families = fixed_strategies(frames, manifest)
    families["c"] = [c for c in candidates if c.strategy == JPEG_INPUT]
    fixed = {k: best_fixed(trace, family, config.fps, rtt, trace.duration_s, overhead)
             for k, family in sorted(families.items())}
    wall = np.array([r["wall_ms"] for r in rows])
    deadline = result["counters"]["deadline_ms"]
    bound = None if deadline is None or fallback is None else deadline + 2 * fallback.head_ms
    summary = {
        "slowdown": slowdown, "requests": len(rows), "seconds": seconds,
        "twostep": live.summary(seconds), "oracle": oracle.summary(seconds),
        "fixed": {k: {**o.summary(seconds), "choice": o.labels[0]} for k, o in fixed.items()},
        "measured": {"mean_ms": float(wall.mean()), "p50_ms": float(np.median(wall)),
                     "p95_ms": float(np.percentile(wall, 95)), "max_ms": float(wall.max()),
                     "accuracy": float(np.mean([r["correct"] for r in rows])),
                     # requests that sent a frame (on-device ones have no deadline)
                     "over_deadline_bound": None if bound is None else int(np.sum(
                         (wall > bound) & np.array([r["bytes"] > 0 or r["past_deadline"] for r in rows])))},
        # seconds to offload again after each time the oracle did (None: not within the trace)
        "recovery_s": [d if math.isfinite(d) else None
                       for d in recovery_delays(live, oracle, RECOVERY_HOLD_S)],
        "deadline_ms": deadline, "deadline_bound_ms": bound,
        "fallback": None if fallback is None else f"{fallback.variant_id}@{fallback.split}",
        "counters": result["counters"],
        "rate_change_lag_ms": {"p50": float(np.median(stepper.lags_ms)) if stepper.lags_ms else None,
                               "max": float(np.max(stepper.lags_ms)) if stepper.lags_ms else None},
        "feasible": len(feasible(frames, floor)),
    }
    summary["ratio_to_oracle"] = summary["twostep"]["mean_ms"] / summary["oracle"]["mean_ms"]
    mine, others = summary["twostep"], summary["fixed"].values()
    summary["targets"] = {
        "mean_le_1.05x_oracle": summary["ratio_to_oracle"] <= 1.05,
        # lower by more than a rounding: a fixed strategy that made twostep's very choices ties
        "mean_below_every_fixed": all(mine["mean_ms"] < f["mean_ms"] * (1 - TIE) for f in others),
        "p95_below_every_fixed": all(mine["p95_ms"] < f["p95_ms"] * (1 - TIE) for f in others),
        "floor_held": bool(min(live.accuracy) >= floor - 1e-12),
        "none_over_deadline_bound": summary["measured"]["over_deadline_bound"] in (0, None),
    }
    log(f"   {slowdown:g}x device: {len(rows)} requests; priced on the trace: twostep mean "
        f"{summary['twostep']['mean_ms']:.1f} ms, oracle {summary['oracle']['mean_ms']:.1f} ms "
        f"({summary['ratio_to_oracle']:.3f}x), measured mean {summary['measured']['mean_ms']:.1f} ms; "
        f"deadline hits {result['counters']['deadline_hits']}, probes {result['counters']['probes']}")
    return {"summary": summary, "rows": rows, "live": live, "oracle": oracle}


def markdown(trace: Trace, config, results: list[dict]) -> str:
    """trace.md: one table per slowdown."""
    lines = [f"# `twostep bench --trace`: {trace.name}", "",
             f"{trace.duration_s:.1f} s of trace (speed {config.trace_speed:g}x from "
             f"{config.trace_start_s:g} s), mean rate {trace.mean_bps / 1e6:.3f} Mbit/s; "
             f"{config.fps:g} requests/s; the device plans itself over one session.", ""]
    for result in results:
        s = result["summary"]
        lines += [f"## Device {s['slowdown']:g}x slower than the edge", "",
                  "| strategy | mean ms | p95 ms | accuracy | switches/min | most used |",
                  "|---|--:|--:|--:|--:|---|"]
        named = [("twostep (f), priced on the trace", s["twostep"]), ("oracle", s["oracle"])] + [
            (f"({k}) {f['choice']}" + (" as JPEG" if k == "c" else ""), f) for k, f in s["fixed"].items()]
        for name, row in named:
            top = next(iter(row["shares"]), "")
            lines.append(f"| {name} | {row['mean_ms']:.1f} | {row['p95_ms']:.1f} | {row['accuracy']:.4f} | "
                         f"{row['switches_per_min']:.1f} | {top} ({row['shares'].get(top, 0):.0%}) |")
        m = s["measured"]
        recovery = ", ".join("never" if d is None else f"{d:.1f}" for d in s["recovery_s"]) or "none"
        lines += ["", f"Measured wall time of twostep's requests: mean {m['mean_ms']:.1f} ms, p50 "
                  f"{m['p50_ms']:.1f}, p95 {m['p95_ms']:.1f}, max {m['max_ms']:.1f}; accuracy on the "
                  f"images {m['accuracy']:.4f}. twostep / oracle {s['ratio_to_oracle']:.3f}x. Deadline "
                  f"{s['deadline_ms'] or 0:.1f} ms (fallback {s['fallback']}): "
                  f"{s['counters']['deadline_hits']} frames given up, {m['over_deadline_bound']} over "
                  f"the deadline plus two on-device inferences. Offloading again after the oracle "
                  f"did (s): {recovery}. Targets: "
                  + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in s["targets"].items()), ""]
    return "\n".join(lines)


def write_trace_report(trace: Trace, config, results: list[dict], out: Path, log: Log) -> list[dict]:
    from pipeline.atomic import write_json_atomic
    from pipeline.plots import plot_trace

    summaries = [r["summary"] for r in results]
    rows = {f"{r['summary']['slowdown']:g}": r["rows"] for r in results}
    write_json_atomic(out / "trace.json", {"trace": trace.name, "duration_s": trace.duration_s,
                                           "config": config.model_dump(mode="json"),
                                           "results": summaries, "rows": rows})
    (out / "trace.md").write_text(markdown(trace, config, results))
    for result in results:
        plot_trace(trace, result["live"], result["oracle"],
                   out / f"trace_device{result['summary']['slowdown']:g}x.png", config.fps)
    log(f"   -> {out / 'trace.md'}, trace.json, trace_device*x.png")
    return summaries
