"""One measured trace replayed live through the Router, priced and compared with the model.

Starts Ray and Serve on 127.0.0.1 with the series (emulated link, the Router's default link
settings), warms the variants up, then replays a segment of a trace on the emulated link
(`PUT /v1/link {"trace": ...}`) while real test images go to `POST /v1/classify` at `--fps`.
Each answer's choice is priced with the cost model on the true trace (as issue 27 priced the
router's choices with `/v1/plan` at the true rate) and set against the oracle's, the model's
replay of the same segment (`serve.trace_replay`) and the fixed strategies; the recoveries after
each dip come from the live choices.

    .venv/bin/python bench/bench_trace_live.py --series runs/demo/series --slowdown 100 \\
        --trace ../shared/traces/hsdpa-norway/car.aarnes-elverum-report.2011-02-10_1611CET.log \\
        --start 400 --seconds 120 [--out docs/results/trace-live-demo]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_traces import RECOVERY_TARGET_S  # noqa: E402

from pipeline.plots import plot_trace  # noqa: E402
from pipeline.profiler import derive_profile, save_profile  # noqa: E402
from pipeline.series import SeriesStore  # noqa: E402
from pipeline.series_images import series_test_images  # noqa: E402
from pipeline.traces import load_trace  # noqa: E402
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
from twostep.trace_live import price, replay, segment, warm_up  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", required=True)
    parser.add_argument("--trace", required=True)
    parser.add_argument("--start", type=float, default=0.0)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--slowdown", type=float, default=100.0)
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--accuracy-drop", type=float, default=0.01)
    parser.add_argument("--app-args", default="{}", help="JSON of AppArgs fields to override, e.g. the "
                        "settings before issue 27: '{\"estimator_window\": 8, \"estimator_max_age_s\": 30, "
                        "\"probe_bytes\": 4096, \"probe_interval_s\": 2, \"deadline_factor\": 0}'")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import ray
    from ray import serve

    from serve.app import deploy
    from serve.process.startup import start_http
    from twostep.ports import free_port

    store = SeriesStore.open(args.series)
    manifest = store.manifest
    trace = segment(load_trace(args.trace), args.start, args.seconds)
    work = Path(tempfile.mkdtemp(prefix="trace-live-"))
    profiles = resolve_profiles(args.series, manifest, slowdown=args.slowdown, ms_per_mmac=0.02,
                                layer_ms=0.02)
    edge_path, device_path = work / "profile.edge.json", work / "profile.device.json"
    save_profile(edge_path, profiles.edge)
    save_profile(device_path, derive_profile(profiles.edge, args.slowdown))
    planner = Planner(manifest, derive_profile(profiles.edge, args.slowdown), profiles.edge)
    candidates = planner.table.candidates
    floor = max(c.accuracy for c in candidates) - args.accuracy_drop
    images, _ = series_test_images(manifest, 64)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    port = free_port()
    start_http("127.0.0.1", port)
    app = AppArgs(series_dir=str(store.directory), edge_profile=str(edge_path),
                  device_profile=str(device_path), accuracy_floor=floor, emulate_link=True,
                  link_rtt_ms=args.rtt_ms, placement="local", call_timeout_s=60.0,
                  **json.loads(args.app_args))
    deploy(app)
    url = f"http://127.0.0.1:{port}"
    warm_up(url, candidates, floor, images[0])
    rows = replay(url, trace, images, args.fps, args.rtt_ms, link="live")
    serve.shutdown()
    ray.shutdown()

    policy = RouterPolicy.from_settings(app, candidates, floor)
    live = price(rows, trace, candidates, args.rtt_ms)
    count = len(rows)
    oracle = replay_oracle(trace, candidates, floor, rtt_ms=args.rtt_ms, starts=live.starts_s)
    on_schedule = replay_oracle(trace, candidates, floor, args.fps, args.rtt_ms)  # the model's times
    model = replay_router(trace, planner, candidates, floor, policy, args.fps, args.rtt_ms)
    n = min(len(live.latency_ms), len(oracle.latency_ms))
    seconds = n / args.fps
    fixed = {k: best_fixed(trace, family, args.fps, args.rtt_ms).summary(seconds)
             for k, family in fixed_strategies(candidates, manifest).items()}
    result = {"trace": trace.name, "seconds": seconds, "app_args": json.loads(args.app_args),
              "fps": args.fps, "slowdown": args.slowdown,
              "live": live.summary(seconds), "model": model.summary(seconds),
              "oracle": oracle.summary(seconds),
              "fixed": fixed, "live_recovery_s": recovery_delays(live, oracle, RECOVERY_TARGET_S),
              "model_recovery_s": recovery_delays(model, on_schedule, RECOVERY_TARGET_S),
              "late_sends": int(np.count_nonzero(np.diff(live.starts_s) > 2.0 / args.fps)),
              "deadline_ms": policy.deadline_ms}
    print(f"{trace.name}: {count} requests at {args.fps:g}/s over {seconds:.0f} s "
          f"(device {args.slowdown:g}x)")
    for name in ("live", "model", "oracle"):
        s = result[name]
        print(f"  {name:7} priced mean {s['mean_ms']:.1f} ms, p95 {s['p95_ms']:.1f} ms, "
              f"switches/min {s['switches_per_min']:.1f}, deadline hits {s['deadline_hits']}")
    for k, s in fixed.items():
        print(f"  ({k})     mean {s['mean_ms']:.1f} ms, p95 {s['p95_ms']:.1f} ms")
    print(f"  live / oracle {result['live']['mean_ms'] / result['oracle']['mean_ms']:.3f}; "
          f"offloading again after a dip (live): {[round(d, 1) for d in result['live_recovery_s']]} s; "
          f"model: {[round(d, 1) for d in result['model_recovery_s']]} s")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "live.json").write_text(json.dumps({**result, "rows": rows}, indent=1))
        plot_trace(trace, live, oracle, out / "live.png", args.fps)
        print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
