"""The router on measured link traces, in the cost model's time: twostep against the oracle and
the fixed strategies, and the link-following settings tuned on one half of the traces and
reported on the other (`serve.trace_replay` is the model; `twostep bench --trace` the live run).

    .venv/bin/python bench/bench_traces.py --series runs/vgg16-half/series \\
        [--traces ../shared/traces/hsdpa-norway] [--slowdown 30] [--fps 5] [--rtt-ms 20] \\
        [--tune] [--out docs/results/traces-vgg16-half]

The traces are sorted by name; the even ones (0, 2, ...) tune, the odd ones report. The device
is `--slowdown` times the edge (profiles estimated from MACs at `--ms-per-mmac` unless the series
has `profile.json`). Prints, per report trace and over all of them: mean and p95 latency of
twostep, the oracle and each fixed strategy, switches per minute, deadline hits, accuracy, and
how long twostep took to offload again after the oracle did; writes traces.json, traces.md and
a picture of the trace with the most stalls.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.plots import plot_trace  # noqa: E402
from pipeline.profiler import derive_profile  # noqa: E402
from pipeline.series import SeriesStore  # noqa: E402
from pipeline.traces import Trace, load_trace  # noqa: E402
from serve.planner import Planner  # noqa: E402
from serve.profiles import resolve_profiles  # noqa: E402
from serve.settings import AppArgs  # noqa: E402
from serve.trace_replay import (  # noqa: E402
    RouterPolicy,
    best_fixed,
    fixed_strategies,
    recovery_delays,
    replay_oracle,
    replay_router,
)

# The grid the coordinate search walks (one setting at a time, twice round).
GRID = {
    "window": [2, 4, 8, 16],
    "max_age_s": [0.5, 1.0, 2.0, 5.0, 30.0],
    "band": [0.1, 0.25, 0.5],
    # (bytes, interval s), each within the probe budget below
    "probe": [(256, 0.125), (256, 0.25), (512, 0.25), (1024, 0.5), (2048, 1.0), (4096, 2.0), (1024, 1.0)],
    "deadline_factor": [0.0, 1.0, 2.0, 4.0],
}
RECOVERY_TARGET_S = 3.0
# Probing costs the device data and the link capacity: at most 16 kbit/s while on the device
# (~1% of the median HSDPA trace's mean rate; 4 KiB every 2 s, the setting before tuning).
PROBE_BUDGET_BPS = 16_384.0
SHARED_TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"


@dataclasses.dataclass(frozen=True)
class Setting:
    """The Router's link-following settings (`serve.settings.AppArgs` fields) the search walks."""

    window: int
    max_age_s: float
    band: float
    probe_bytes: int
    probe_interval_s: float
    deadline_factor: float  # x the on-device time; 0: no deadline

    @classmethod
    def from_args(cls, args: AppArgs) -> Setting:
        return cls(args.estimator_window, args.estimator_max_age_s, args.estimator_band, args.probe_bytes,
                   args.probe_interval_s, args.deadline_factor)

    def args(self, initial_bps: float) -> AppArgs:
        return AppArgs(series_dir="-", initial_bandwidth_bps=initial_bps, estimator_window=self.window,
                       estimator_max_age_s=self.max_age_s, estimator_band=self.band,
                       probe_bytes=self.probe_bytes, probe_interval_s=self.probe_interval_s,
                       deadline_factor=self.deadline_factor)


# What the Router ran with before it was tuned on traces (issue 27's measurement).
BEFORE = Setting(window=8, max_age_s=30.0, band=0.25, probe_bytes=4096, probe_interval_s=2.0,
                 deadline_factor=0.0)


class Bench:
    def __init__(self, args):
        self.args = args
        self.store = SeriesStore.open(args.series)
        manifest = self.store.manifest
        profiles = resolve_profiles(args.series, manifest, slowdown=args.slowdown,
                                    ms_per_mmac=args.ms_per_mmac, layer_ms=args.layer_ms)
        # the device is --slowdown x the edge, whatever device profile the series holds
        self.planner = Planner(manifest, derive_profile(profiles.edge, args.slowdown), profiles.edge)
        self.candidates = self.planner.table.candidates
        best = max(c.accuracy for c in self.candidates)
        self.floor = best - args.accuracy_drop
        local = [c for c in self.candidates if c.bytes_sent == 0 and c.accuracy >= self.floor]
        self.device_ms = min(c.head_ms for c in local)
        self.families = fixed_strategies(self.candidates, manifest)
        self.profile_source = f"edge: {profiles.source.split(';')[0]}; device = {args.slowdown:g} x edge"
        self._oracles: dict = {}

    def run(self, trace: Trace, setting: Setting, fixed: bool = True) -> dict:
        a = self.args
        policy = RouterPolicy.from_settings(setting.args(a.initial_mbit * 1e6), self.candidates,
                                            self.floor)
        router = replay_router(trace, self.planner, self.candidates, self.floor, policy, a.fps, a.rtt_ms,
                               a.duration_s)
        if trace.name not in self._oracles:  # the same for every setting
            self._oracles[trace.name] = replay_oracle(trace, self.candidates, self.floor, a.fps, a.rtt_ms,
                                                      a.duration_s)
        oracle = self._oracles[trace.name]
        duration = len(router.starts_s) / a.fps
        row = {"trace": trace.name, "mean_mbit": trace.mean_bps / 1e6, "seconds": duration,
               "twostep": router.summary(duration), "oracle": oracle.summary(duration),
               "recovery_s": recovery_delays(router, oracle, RECOVERY_TARGET_S),
               "recovery_any_gain_s": recovery_delays(router, oracle, RECOVERY_TARGET_S, margin=0.0),
               "deadline_ms": policy.deadline_ms,
               "over_deadline": int(np.count_nonzero(router.latency_ms > (policy.deadline_ms or np.inf)
                                                     + 2 * self.device_ms))}
        if fixed:
            outcomes = {k: best_fixed(trace, family, a.fps, a.rtt_ms, a.duration_s)
                        for k, family in self.families.items()}
            row["fixed"] = {k: o.summary(duration) for k, o in outcomes.items()}
            row["_fixed"] = outcomes
        row["_router"], row["_oracle"] = router, oracle
        return row

    def score(self, traces: list[Trace], setting: Setting) -> float:
        """Mean of twostep / oracle mean latency, plus the share of recoveries over 3 s."""
        ratios, late, count = [], 0, 0
        for trace in traces:
            row = self.run(trace, setting, fixed=False)
            ratios.append(row["twostep"]["mean_ms"] / row["oracle"]["mean_ms"])
            late += sum(d > RECOVERY_TARGET_S for d in row["recovery_s"])
            count += len(row["recovery_s"])
        return float(np.mean(ratios)) + (late / count if count else 0.0)


def tune(bench: Bench, traces: list[Trace], start: Setting, log) -> Setting:
    best, best_score = start, bench.score(traces, start)
    log(f"tuning on {len(traces)} traces: start {dataclasses.asdict(start)} -> {best_score:.4f}")
    for _ in range(2):
        for name, values in GRID.items():
            for value in values:
                change = dict(zip(("probe_bytes", "probe_interval_s"), value, strict=True)) \
                    if name == "probe" else {name: value}
                trial = dataclasses.replace(best, **change)
                if trial == best or trial.probe_bytes * 8.0 / trial.probe_interval_s > PROBE_BUDGET_BPS:
                    continue
                score = bench.score(traces, trial)
                if score < best_score - 1e-4:
                    best, best_score = trial, score
                    log(f"  {name} = {value}: {score:.4f}")
    log(f"tuned: {dataclasses.asdict(best)} -> {best_score:.4f}")
    return best


def pooled(rows: list[dict]) -> dict:
    """Mean and p95 over every request of every trace: twostep, the oracle, each fixed strategy
    (its best member in hindsight on each trace)."""
    def stats(outcomes) -> dict:
        latency = np.concatenate([o.latency_ms for o in outcomes])
        return {"mean_ms": float(latency.mean()), "p95_ms": float(np.percentile(latency, 95))}
    out = {"twostep": stats(r["_router"] for r in rows), "oracle": stats(r["_oracle"] for r in rows)}
    for key in sorted(rows[0].get("_fixed", {})):
        out[key] = stats(r["_fixed"][key] for r in rows)
    return out


def aggregate(rows: list[dict]) -> dict:
    def ratio(key, of="mean_ms"):
        return float(np.mean([r["twostep"][of] / r[key][of] for r in rows]))
    fixed_keys = sorted(rows[0].get("fixed", {}))
    delays = [d for r in rows for d in r["recovery_s"]]
    any_gain = [d for r in rows for d in r["recovery_any_gain_s"]]
    return {
        "pooled": pooled(rows),
        "traces": len(rows),
        "twostep_over_oracle_mean": ratio("oracle"),
        "twostep_over_oracle_mean_max": float(max(r["twostep"]["mean_ms"] / r["oracle"]["mean_ms"]
                                                  for r in rows)),
        "fixed_beaten_mean": {k: sum(r["twostep"]["mean_ms"] < r["fixed"][k]["mean_ms"] for r in rows)
                              for k in fixed_keys},
        "fixed_beaten_p95": {k: sum(r["twostep"]["p95_ms"] < r["fixed"][k]["p95_ms"] for r in rows)
                             for k in fixed_keys},
        "recoveries": len(delays),
        "recovery_p50_s": float(np.median(delays)) if delays else None,
        "recovery_max_s": float(max(delays)) if delays else None,
        "recoveries_over_3s": sum(d > RECOVERY_TARGET_S for d in delays),
        "recoveries_any_gain": len(any_gain),
        "recoveries_any_gain_over_3s": sum(d > RECOVERY_TARGET_S for d in any_gain),
        "deadline_hits": sum(r["twostep"]["deadline_hits"] for r in rows),
        "over_deadline": sum(r["over_deadline"] for r in rows),
        "switches_per_min": float(np.mean([r["twostep"]["switches_per_min"] for r in rows])),
        "accuracy_min": float(min(r["twostep"]["accuracy"] for r in rows)),
    }


def markdown(rows: list[dict], total: dict, setting: Setting, before: dict | None) -> str:
    keys = sorted(rows[0].get("fixed", {}))
    head = ["trace", "mean Mbit/s", "twostep mean/p95 ms", "oracle mean/p95",
            *[f"({k}) mean/p95" for k in keys], "switch/min", "recovery s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        t, o = r["twostep"], r["oracle"]
        cells = [r["trace"][:40], f"{r['mean_mbit']:.2f}", f"{t['mean_ms']:.1f} / {t['p95_ms']:.1f}",
                 f"{o['mean_ms']:.1f} / {o['p95_ms']:.1f}",
                 *[f"{r['fixed'][k]['mean_ms']:.1f} / {r['fixed'][k]['p95_ms']:.1f}" for k in keys],
                 f"{t['switches_per_min']:.1f}",
                 ", ".join(f"{d:.1f}" for d in r["recovery_s"][:5])
                 + (" ..." if len(r["recovery_s"]) > 5 else "")]
        lines.append("| " + " | ".join(cells) + " |")
    pool = total["pooled"]
    lines += ["", f"Every request of the {total['traces']} traces pooled:", "",
              "| | " + " | ".join(pool) + " |", "|---" * (len(pool) + 1) + "|",
              "| mean ms | " + " | ".join(f"{v['mean_ms']:.2f}" for v in pool.values()) + " |",
              "| p95 ms | " + " | ".join(f"{v['p95_ms']:.2f}" for v in pool.values()) + " |"]
    lines += ["", f"Settings: {json.dumps(dataclasses.asdict(setting))}", "",
              f"Over all {total['traces']} traces: {json.dumps(total)}"]
    if before:
        lines += ["", f"With the settings before issue 27 ({json.dumps(dataclasses.asdict(BEFORE))}): "
                      f"{json.dumps(before)}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", required=True)
    parser.add_argument("--traces", default=str(SHARED_TRACES / "hsdpa-norway"))
    parser.add_argument("--slowdown", type=float, default=30.0)
    parser.add_argument("--ms-per-mmac", type=float, default=0.02)
    parser.add_argument("--layer-ms", type=float, default=0.02)
    parser.add_argument("--accuracy-drop", type=float, default=0.01)
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--initial-mbit", type=float, default=1.0)
    parser.add_argument("--duration-s", type=float, default=None,
                        help="replay this long (default: each trace once)")
    parser.add_argument("--tune", action="store_true", help="tune the settings on the even traces first")
    parser.add_argument("--setting", default=None,
                        help="JSON of Setting fields to start from / report with")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    files = sorted(p for p in Path(args.traces).iterdir() if p.is_file() and p.suffix != ".md")
    traces = [load_trace(p) for p in files]
    tuning, report = traces[0::2], traces[1::2]
    bench = Bench(args)
    log = print
    log(f"{len(traces)} traces from {args.traces}: {len(tuning)} tune, {len(report)} report; "
        f"{len(bench.candidates)} candidates, floor {bench.floor:.4f}, on-device {bench.device_ms:.1f} ms "
        f"({bench.profile_source})")
    default = Setting.from_args(AppArgs(series_dir="-"))
    setting = dataclasses.replace(default, **json.loads(args.setting)) if args.setting else default
    started = time.time()
    if args.tune:
        setting = tune(bench, tuning, setting, log)
    rows = [bench.run(trace, setting) for trace in report]
    total = aggregate(rows)
    before = aggregate([bench.run(trace, BEFORE) for trace in report]) if setting != BEFORE else None
    log(markdown(rows, total, setting, before))
    log(f"({time.time() - started:.0f} s)")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        worst = max(rows, key=lambda r: len(r["recovery_s"]) + r["twostep"]["deadline_hits"])
        plot_trace(next(t for t in report if t.name == worst["trace"]), worst["_router"], worst["_oracle"],
                   out / "trace.png", args.fps)
        clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
        document = {"args": vars(args), "setting": dataclasses.asdict(setting),
                    "tuning": [t.name for t in tuning], "report": [t.name for t in report],
                    "total": total, "before": before, "rows": clean}
        (out / "traces.json").write_text(json.dumps(document, indent=1))
        (out / "traces.md").write_text(markdown(rows, total, setting, before))
        log(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
