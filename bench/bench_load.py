"""Serving at scale: N simulated devices sending frames for their own plans, bounded in count and time.

One Ray session on this machine (loopback only), twostep's two apps on a series (default: a tiny
random series built here). Each of `--devices` devices (threads, one keep-alive connection each,
`serve.device.client.DeviceClient`) has its own uplink rate (log-spaced 0.2-50 Mbit/s) and accuracy
floor (best accuracy minus 0-5 points), takes its (variant, split) from the edge's plan table
for that floor and rate (fetched once per floor), and sends `--frames` frames of one real test
image made by that head (heads are run here once per distinct plan: the load is the edge's).
Phases, each with a deadline:

1. fixed tail replicas: 1, then 2; requests/s, p50/p95/p99, errors;
2. the same 2 tails, one killed mid-run (`ray.kill` of its actor): requests lost or failed
   (a device resends a frame whose replica died: serve.device.client.DeviceClient.send_frame);
3. autoscaling 1..`--max-tails` on the tail's request count: load until it has scaled up, then
   idle until it is back to 1, with the times.

`--transport stream` sends the same frames over device sessions (`WS /v1/tail/stream`, one per
device, `serve.device.stream_client.DeviceSession`, one frame in flight as over HTTP) and also reports
where the sessions ended (per replica) and their reconnects; `--transport both` runs every phase
over HTTP and then over sessions at the same offered load.

    .venv/bin/python bench/bench_load.py [--devices 64] [--frames 20] [--series DIR]
        [--transport http|stream|both]
"""

import argparse
import concurrent.futures
import logging
import math
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # synthetic_series

from serve.process.ingress import MODES  # noqa: E402
from twostep.ports import free_port  # noqa: E402

TAIL_APP = "twostep-tail"


def mixed_plans(store, devices: int) -> list[dict]:
    """Half the devices send heavy frames (the raw input: the tail runs the whole network), half
    light ones (the last pool: the tail runs only the classifier), of the base model."""
    from pipeline.split import split_points
    from serve.runner import VariantRunner

    base = store.manifest.base
    runner = VariantRunner.load(store, base)
    pixels = np.random.default_rng(0).integers(0, 256, (1, *runner.input_shape), dtype=np.uint8)
    late = [p for p in split_points(store.get(base).arch_spec) if p.startswith("pool")][-1]
    frames = {s: runner.run_head(pixels, s).frame for s in ("input", late)}
    features = {s: runner.calls(s)[0](pixels) for s in ("input", late)}
    return [{"rate": 1e6, "floor": 0.0, "variant": base, "split": s, "frame": frames[s],
             "features": features[s]} for s in (("input", late) * devices)[:devices]]


def device_plans(url: str, store, devices: int) -> list[dict]:
    """Per device: its rate, floor and the (variant, split, frame) its plan table gives it."""
    from serve.device.client import DeviceClient
    from serve.runner import VariantRunner

    best = max(v.accuracy for v in store.variants)
    pixels = np.random.default_rng(0).integers(0, 256, (1, *VariantRunner.load(
        store, store.manifest.base).input_shape), dtype=np.uint8)
    frames: dict[tuple[str, str], bytes] = {}
    features: dict[tuple[str, str], np.ndarray] = {}
    plans = []
    with DeviceClient(url) as client:
        client.rtt_ms = 0.0
        for i in range(devices):
            rate = math.exp(math.log(0.2e6) + (math.log(50e6) - math.log(0.2e6)) * i / max(devices - 1, 1))
            floor = round(best - 0.01 * (i % 6), 4)
            client.assume_uplink(rate)
            client._current.clear()
            row = client.choose(accuracy_floor=floor)
            key = (row["variant"], row["split"])
            if key[1] == "output":
                key = (row["variant"], "input")  # all on device sends nothing: load the edge anyway
            if key not in frames:
                runner = VariantRunner.load(store, key[0])
                frames[key] = runner.run_head(pixels, key[1]).frame
                features[key] = runner.calls(key[1])[0](pixels)
            plans.append({"rate": rate, "floor": floor, "variant": key[0], "split": key[1],
                          "frame": frames[key], "features": features[key]})
    return plans


def run_load(url: str, plans: list[dict], frames: int, deadline_s: float,
             during=None, transport: str = "http", stop: threading.Event | None = None,
             on_answer=None, pace_s: float = 0.0) -> dict:
    """Every device sends `frames` frames back to back (over HTTP or a session); `during(done)`
    runs in the driver thread while the load runs (e.g. kills a replica); `stop` set ends the
    load early (each device after its frame in flight); `on_answer(answer)` sees every HTTP
    answer (its `replica` names the EdgeTail replica); `pace_s`: an HTTP device waits this long
    after each answer (a light load). Returns the figures."""
    from serve.device.client import DeviceClient, DeviceError

    latencies: list[float] = []
    errors: list[str] = []
    done = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + deadline_s
    placed: dict[str, int] = {}
    reconnects = [0]

    def session_device(plan: dict) -> None:
        from serve.device.stream_client import DeviceSession

        with DeviceSession(url, link=f"dev{int(plan['rate'])}", timeout_s=120, max_reconnects=60) as session:
            for _ in range(frames):
                if time.monotonic() > stop_at:
                    break
                start = time.perf_counter()
                try:
                    answer, _ = session.wait(session.send(plan["variant"], plan["split"], plan["features"]))
                except Exception as err:  # noqa: BLE001 - counted, reported
                    with lock:
                        errors.append(f"{type(err).__name__}: {err}"[:120])
                    return
                with lock:
                    if not answer.ok:
                        errors.append(answer.error[:120])
                        continue
                    latencies.append((time.perf_counter() - start) * 1000)
                    done[0] += 1
            with lock:
                replica = session.accept.get("replica", "?")
                placed[replica] = placed.get(replica, 0) + 1
                reconnects[0] += session.reconnects - 1

    def device(plan: dict) -> None:
        if transport == "stream":
            return session_device(plan)
        with DeviceClient(url, link=f"dev{int(plan['rate'])}", timeout_s=120, transport="http") as client:
            for _ in range(frames):
                if time.monotonic() > stop_at or stop is not None and stop.is_set():
                    return
                start = time.perf_counter()
                try:
                    answer = client.send_frame(plan["frame"], plan["variant"], plan["split"])
                except DeviceError as err:
                    with lock:
                        errors.append(str(err)[:120])
                    continue
                with lock:
                    latencies.append((time.perf_counter() - start) * 1000)
                    done[0] += 1
                if on_answer is not None:
                    on_answer(answer)
                if pace_s:
                    time.sleep(pace_s)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(plans)) as pool:
        futures = [pool.submit(device, p) for p in plans]
        if during is not None:
            during(done)
        for future in futures:
            future.result()
    wall = time.perf_counter() - started
    ms = np.array(latencies) if latencies else np.array([math.nan])
    return {"requests": len(latencies), "errors": len(errors), "error_samples": errors[:3],
            "expected": len(plans) * frames, "wall_s": wall, "rps": len(latencies) / wall,
            "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99)), "placed": placed, "reconnects": reconnects[0]}


def tail_states() -> dict:
    from ray import serve

    return dict(serve.status().applications[TAIL_APP].deployments["EdgeTail"].replica_states)


def deploy_tails(series: str, **tail_args) -> None:
    from ray import serve

    from serve.app import build_tail_app
    from serve.settings import AppArgs, tail_app_name

    args = AppArgs(series_dir=series, ms_per_mmac=20.0, placement="local", **tail_args)
    serve.run(build_tail_app(args), name=tail_app_name(args.app_name), route_prefix="/v1/tail",
              logging_config={"enable_access_log": False})


def wait_running(count: int, timeout_s: float = 120.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        states = tail_states()
        if states.get("RUNNING", 0) == count and sum(states.values()) == count:
            return time.monotonic() - start
        time.sleep(0.25)
    raise TimeoutError(f"EdgeTail did not settle at {count} replicas: {tail_states()}")


def show(name: str, r: dict) -> None:
    print(f"{name:44} {r['rps']:7.1f} frames/s  p50 {r['p50']:7.1f}  p95 {r['p95']:7.1f}  "
          f"p99 {r['p99']:7.1f} ms  done {r['requests']}/{r['expected']}  errors {r['errors']}"
          + (f" {r['error_samples']}" if r["errors"] else ""), flush=True)
    if r["placed"]:
        print(f"  sessions per replica at the end: {sorted(r['placed'].values(), reverse=True)}; "
              f"{r['reconnects']} reconnect(s)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", help="series directory (default: a tiny one built here)")
    parser.add_argument("--devices", type=int, default=64)
    parser.add_argument("--frames", type=int, default=20, help="frames per device and phase")
    parser.add_argument("--max-tails", type=int, default=2)
    parser.add_argument("--deadline-s", type=float, default=180.0, help="per phase")
    parser.add_argument("--ingress", choices=MODES, default="auto")
    parser.add_argument("--batch", type=int, default=1, help="EdgeTail batch size (1: off)")
    parser.add_argument("--mixed", action="store_true",
                        help="heavy and light frames (raw input / last pool) instead of plans")
    parser.add_argument("--signal", choices=("frames", "requests", "work"), default="frames",
                        help="what the autoscaling phase scales EdgeTail on")
    parser.add_argument("--target-work-ms", type=float, default=20.0,
                        help="with --signal work: tail work in flight per replica to aim at")
    parser.add_argument("--autoscale-only", action="store_true", help="skip the fixed-tail phases")
    parser.add_argument("--transport", choices=("http", "stream", "both"), default="http",
                        help="frames as POST /v1/tail requests, over device sessions, or both")
    parser.add_argument("--max-sessions", type=int, default=1024,
                        help="sessions one EdgeTail replica holds (stream_max_sessions)")
    args = parser.parse_args()

    from serve.process.ingress import apply_ingress

    print(apply_ingress(args.ingress)[1])
    from twostep.ray_env import apply_ray_env

    apply_ray_env()
    import ray
    from ray import serve

    from pipeline.series import SeriesStore
    from serve.app import deploy
    from serve.process.startup import start_http
    from serve.settings import AppArgs

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    series = args.series
    if series is None:
        from synthetic_series import make_tiny_series

        series = str(make_tiny_series(Path(tempfile.mkdtemp()) / "series").directory)
    store = SeriesStore.open(series)
    port = free_port()
    start_http("127.0.0.1", port)
    url = f"http://127.0.0.1:{port}"
    common = {"tail_batch_size": args.batch, "tail_max_ongoing_requests": max(4, args.batch),
              "stream_max_sessions": args.max_sessions}
    deploy(AppArgs(series_dir=series, ms_per_mmac=20.0, placement="local", tail_replicas=1, **common))
    plans = mixed_plans(store, args.devices) if args.mixed else device_plans(url, store, args.devices)
    distinct = sorted({(p["variant"], p["split"]) for p in plans})
    print(f"{args.devices} devices, {args.frames} frames each; {len(distinct)} distinct plans: "
          + ", ".join(f"{v}@{s}" for v, s in distinct), flush=True)
    run_load(url, plans[:8], 3, args.deadline_s)  # warm-up: variants loaded

    def phases(transport: str) -> dict:
        results = {}
        for tails in () if args.autoscale_only else (1, 2):
            deploy_tails(series, tail_replicas=tails, **common)
            wait_running(tails)
            run_load(url, plans[:8], 3, args.deadline_s, transport=transport)
            results[f"fixed {tails}"] = r = run_load(url, plans, args.frames, args.deadline_s,
                                                       transport=transport)
            show(f"{transport}: {tails} tail replica(s)", r)

        def kill_one(done):
            while done[0] < args.devices * args.frames // 3:
                time.sleep(0.01)
            replica = [a for a in ray.util.list_named_actors(all_namespaces=True)
                       if "EdgeTail" in a["name"] and f"{TAIL_APP}#" in a["name"]][0]
            ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
            print(f"  killed {replica['name']} after {done[0]} answers", flush=True)

        if not args.autoscale_only:
            results["kill"] = r = run_load(url, plans, args.frames, args.deadline_s, during=kill_one,
                                          transport=transport)
            show(f"{transport}: 2 tails, one killed mid-run", r)
            wait_running(2)

        deploy_tails(series, tail_replicas=None, tail_max_replicas=args.max_tails,
                     tail_autoscaling_signal=args.signal, tail_target_work_ms=args.target_work_ms, **common)
        wait_running(1)
        scaled = {}

        def watch(done):
            start = time.monotonic()
            while time.monotonic() - start < args.deadline_s and done[0] < len(plans) * args.frames * 2:
                if tail_states().get("RUNNING", 0) >= args.max_tails:
                    scaled["up_s"] = time.monotonic() - start
                    return
                time.sleep(0.25)

        replica_s = [0.0]
        sampling = threading.Event()

        def sample():  # replica-seconds while the load runs: what the autoscaler spent
            while not sampling.wait(0.25):
                replica_s[0] += 0.25 * tail_states().get("RUNNING", 0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        results["autoscale"] = r = run_load(url, plans, args.frames * 2, args.deadline_s, during=watch,
                                           transport=transport)
        sampling.set()
        show(f"{transport}: autoscaling 1..{args.max_tails} on {args.signal}", r)
        print(f"  {replica_s[0]:.1f} replica-seconds over {r['wall_s']:.1f} s of load", flush=True)
        up_s = scaled.get("up_s", math.nan)
        print(f"  scaled up to {args.max_tails} after {up_s:.1f} s of load", flush=True)
        try:
            print(f"  back to 1 replica {wait_running(1, timeout_s=120):.1f} s after the load ended")
        except TimeoutError as err:
            print(f"  {err}")
        if args.autoscale_only:
            return results
        one, two = results["fixed 1"], results["fixed 2"]
        print(f"p99 at {args.devices} devices: 2 tails {two['p99']:.1f} ms vs 1 tail {one['p99']:.1f} ms "
              f"({one['p99'] / two['p99']:.2f}x); requests/s {two['rps'] / one['rps']:.2f}x")
        kill = results["kill"]
        print(f"tail killed mid-run: {kill['expected'] - kill['requests']} frame(s) lost or failed "
              f"of {kill['expected']}")
        return results
    for transport in ("http", "stream") if args.transport == "both" else (args.transport,):
        print(f"--- transport {transport}", flush=True)
        phases(transport)
    serve.shutdown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
