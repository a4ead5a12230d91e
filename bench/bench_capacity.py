"""Capacity: frames/s per EdgeTail replica and core, and serve/capacity.py's model checked at 1, 2
and 4 edge nodes.

On an autoscaling cluster of cluster.yaml's node types (twostep/autoscaling_cluster.py) held at
4 edge nodes of 1 CPU, for each series and N in --nodes (default 1, 2, 4): `twostep serve
--address --tail-replicas N --replica-cpus 0.6` (one EdgeTail replica a node), then per
transport (POST /v1/tail, device sessions):

1. warm-up: the devices' plans for 10 s (every replica loads the variants: peer warm-up);
2. light: 4 devices at 10 frames/s each: their p99 less the tail's CPU time is `fixed_ms`
   (what a frame spends outside a replica's queue, at this machine's jitter);
3. saturation: --devices devices back to back for --seconds: frames/s, p50/p99, and the CPU
   seconds each role spent (bench/process_cpu.py: the EdgeTail replicas, the ingress, the link
   board, the controller, the devices, the whole host);
4. paced: the same devices at --paced-share of the predicted capacity: p99 against the model's.

At N = 1 the costs are measured (`serve.capacity.FrameCosts`); at every N the model predicts
the saturation frames/s as min(N x replica frames/s, host bound), the host bound being this
machine's cores over the host CPU ms per frame at N = 1 (the fake nodes share its cores, and so
do the devices, which a real deployment does not have), and the paced load's p99 as M/M/1 per
replica (queue factor 1). Stop a background prune first (its CPU is counted in the host's).

    .venv/bin/python bench/bench_capacity.py --series runs/demo/series \
        [--series runs/vgg16-half/series-attempt1] [--out docs/results/capacity]
    .venv/bin/python bench/bench_capacity.py --report docs/results/capacity/capacity.json
"""

import argparse
import concurrent.futures
import json
import logging
import math
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_autoscale_serve import TAIL_CPUS, TWOSTEP, healthy, stoppable, wait_for  # noqa: E402
from bench_load import TAIL_APP, device_plans  # noqa: E402
from process_cpu import by_role, spent  # noqa: E402

from serve.capacity import FrameCosts  # noqa: E402
from serve.process.ingress import choose_ingress  # noqa: E402
from twostep.autoscaling_cluster import AutoscalingCluster  # noqa: E402
from twostep.ports import free_port  # noqa: E402

EDGE_NODES = 4
HEALTHY_TIMEOUT_S = 300.0
WARM_S = 10.0
LIGHT_DEVICES, LIGHT_FPS, LIGHT_S = 4, 10.0, 10.0  # 400 frames at a tenth of a replica's load


class FrameFailed(Exception):
    """A frame answered with an error (the device goes on with the next)."""


def drive(url: str, plans: list[dict], seconds: float, transport: str,
          fps: float | None = None) -> dict:
    """Every device sends its plan's frame for `seconds`, one in flight: back to back, or `fps`
    frames/s each (on a clock, from a random phase). Returns frames/s, latencies, errors and
    the frames each replica answered (HTTP answers name theirs; sessions: where they ended)."""
    from serve.device.client import DeviceClient, DeviceError
    from serve.device.stream_client import DeviceSession

    latencies: list[float] = []
    errors: list[str] = []
    replicas: dict[str, int] = {}
    lock = threading.Lock()
    start_at = time.monotonic()
    stop_at = start_at + seconds

    def paced(tick: int, phase: float) -> None:
        if fps:
            wait = start_at + phase + tick / fps - time.monotonic()
            if wait > 0:
                time.sleep(wait)

    def record(ms: float | None, replica: str | None, error: str | None = None) -> None:
        with lock:
            if error is not None:
                errors.append(error[:120])
                return
            latencies.append(ms)
            replicas[replica or "?"] = replicas.get(replica or "?", 0) + 1

    def frames(send_one, phase: float) -> None:
        """Send until the phase ends; `send_one()` returns the answering replica or raises."""
        tick = 0
        while time.monotonic() < stop_at:
            paced(tick, phase)
            tick += 1
            begin = time.perf_counter()
            try:
                replica = send_one()
            except FrameFailed as err:
                record(None, None, str(err))
                continue
            record((time.perf_counter() - begin) * 1000, replica)

    def http_device(plan: dict, phase: float) -> None:
        with DeviceClient(url, link=f"dev{int(plan['rate'])}", timeout_s=60, transport="http") as client:
            def send_one() -> str | None:
                try:
                    return client.send_frame(plan["frame"], plan["variant"], plan["split"]).get("replica")
                except DeviceError as err:
                    raise FrameFailed(str(err)) from None

            frames(send_one, phase)

    def session_device(plan: dict, phase: float) -> None:
        with DeviceSession(url, link=f"dev{int(plan['rate'])}", timeout_s=60, max_reconnects=20) as session:
            def send_one() -> str | None:
                answer, _ = session.wait(session.send(plan["variant"], plan["split"], plan["features"]))
                if not answer.ok:
                    raise FrameFailed(answer.error)
                return session.accept.get("replica")

            try:
                frames(send_one, phase)
            except Exception as err:  # noqa: BLE001 - a session that gave up: counted, reported
                record(None, None, f"{type(err).__name__}: {err}")

    device = http_device if transport == "http" else session_device
    rng = random.Random(0)
    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(plans)) as pool:
        futures = [pool.submit(device, p, rng.random() / fps if fps else 0.0) for p in plans]
        for future in futures:
            future.result()
    wall = time.perf_counter() - began
    ms = np.array(latencies) if latencies else np.array([math.nan])
    return {"frames": len(latencies), "wall_s": wall, "fps": len(latencies) / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "errors": len(errors), "error_samples": errors[:3],
            "replicas": sorted(replicas.values(), reverse=True)}


def measured(url: str, plans: list[dict], seconds: float, transport: str, fps: float | None = None) -> dict:
    """`drive` with the CPU seconds each role spent over it, and per frame."""
    before = by_role()
    result = drive(url, plans, seconds, transport, fps)
    cpu = spent(before, by_role())
    result["cpu_s"] = cpu
    frames = max(result["frames"], 1)
    result["cpu_ms_per_frame"] = {role: 1000.0 * s / frames for role, s in cpu.items()}
    return result


def serve_argv(series: str, address: str, port: int, config: Path, nodes: int) -> list[str]:
    argv = [TWOSTEP, "serve", series, "--address", address, "--port", str(port),
            "--proxy-location", "HeadOnly", "--placement", "resources", "--head-cpus", "0",
            "--replica-cpus", str(TAIL_CPUS), "--tail-replicas", str(nodes),
            "--cluster-config", str(config)]
    if not (Path(series) / "profile.json").is_file():
        argv += ["--ms-per-mmac", "20"]
    return argv


def tail_running() -> int:
    """EdgeTail's replicas running, or -1 while any other is starting or stopping."""
    from ray import serve

    app = serve.status().applications.get(TAIL_APP)
    tail = app.deployments.get("EdgeTail") if app else None  # none while the app is deleted
    states = tail.replica_states if tail else {}
    running = states.get("RUNNING", 0)
    return running if sum(states.values()) == running else -1


def costs_of(light: dict, saturated: dict) -> FrameCosts:
    """The costs measured at one replica: its saturated frames/s, the CPU per frame of each
    role, the light load's p99 less the tail's CPU time."""
    per = saturated["cpu_ms_per_frame"]
    tail = per["tail"]
    return FrameCosts(replica_fps=saturated["fps"], tail_cpu_ms=tail,
                      ingress_cpu_ms=per.get("ingress", 0.0), board_cpu_ms=per.get("board", 0.0),
                      fixed_ms=max(0.0, light["p99_ms"] - tail))


def capacity_at(costs: FrameCosts, host_ms: float, nodes: int, cores: int) -> tuple[float, float]:
    """(the model's saturated frames/s at `nodes` replicas on this machine, its host bound):
    nodes x a replica's frames/s, at most this machine's cores over the host's CPU per frame."""
    host_bound = cores * 1000.0 / host_ms
    return min(nodes * costs.replica_fps, host_bound), host_bound


def predicted_p99(costs: FrameCosts, capacity_fps: float, nodes: int, offered_fps: float) -> float:
    """The model's p99 at `offered_fps` over `nodes` replicas, a replica's service rate being
    its share of the predicted capacity (on this machine the host may bound it first)."""
    return costs.fixed_ms + costs.queue_p99_ms(offered_fps / nodes, capacity_fps / nodes)


def check(result: dict) -> None:
    """Fit the model at each series' fewest nodes and check it at the others; adds `costs` and
    `check` to every series of `result` and prints the comparison."""
    cores = result["cores"]
    for run in result["series"]:
        run["costs"], run["check"] = {}, {}
        by_nodes = {int(n): row for n, row in run["by_nodes"].items()}
        for transport in sorted({t for row in by_nodes.values() for t in row}):
            at = {n: row[transport] for n, row in sorted(by_nodes.items()) if transport in row}
            first = min(at)
            costs = costs_of(at[first]["light"], at[first]["saturated"])
            host_ms = at[first]["saturated"]["cpu_ms_per_frame"]["host"]
            run["costs"][transport] = vars(costs) | {"replica_cores": costs.replica_cores,
                                                     "core_fps": costs.core_fps}
            print(f"{run['series']}, {transport}: a replica {costs.replica_fps:.0f} frames/s on "
                  f"{costs.replica_cores:.2f} cores ({costs.core_fps:.0f} a core); CPU ms a frame: tail "
                  f"{costs.tail_cpu_ms:.2f}, ingress {costs.ingress_cpu_ms:.2f}, board "
                  f"{costs.board_cpu_ms:.3f}; fixed {costs.fixed_ms:.1f} ms (at {first} node(s))")
            rows = []
            for nodes, m in at.items():
                capacity, host_bound = capacity_at(costs, host_ms, nodes, cores)
                p99 = predicted_p99(costs, capacity, nodes, m["paced"]["fps"])
                rows.append({"nodes": nodes, "measured_fps": m["saturated"]["fps"], "model_fps": capacity,
                             "host_bound_fps": host_bound, "paced_fps": m["paced"]["fps"],
                             "paced_p99_ms": m["paced"]["p99_ms"], "model_p99_ms": p99})
                bound = " (host bound)" if capacity == host_bound else ""
                print(f"  {nodes} node(s): saturated {m['saturated']['fps']:7.1f} frames/s, model "
                      f"{capacity:7.1f} ({m['saturated']['fps'] / capacity:.2f}x){bound}; paced "
                      f"{m['paced']['fps']:6.1f}/s: p99 {m['paced']['p99_ms']:6.1f} ms, model {p99:6.1f}")
            run["check"][transport] = rows


def show(label: str, r: dict) -> None:
    per = r.get("cpu_ms_per_frame", {})
    roles = ("tail", "ingress", "board", "controller", "router", "devices", "other", "host")
    cpu = "  ".join(f"{k} {per[k]:.2f}" for k in roles if k in per)
    print(f"  {label:34} {r['fps']:7.1f} frames/s  p50 {r['p50_ms']:6.1f}  p99 {r['p99_ms']:7.1f} ms  "
          f"errors {r['errors']}  per replica {r['replicas']}", flush=True)
    if cpu:
        print(f"      CPU ms/frame: {cpu}", flush=True)


def run_series(series: str, cluster, port: int, nodes_list: list[int], args, out: Path) -> dict:
    from pipeline.series import SeriesStore

    results: dict = {"series": series, "by_nodes": {}}
    fit: dict[str, tuple[FrameCosts, float]] = {}  # per transport: costs and host CPU at the fewest nodes
    for nodes in nodes_list:
        url = f"http://127.0.0.1:{port}"
        argv = serve_argv(series, cluster.address, port, cluster.config_path, nodes)
        log = open(out / f"serve-{Path(series).parent.name}-{nodes}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=cluster.env,
                                start_new_session=True)
        try:
            if not wait_for(lambda url=url, proc=proc: healthy(url) or proc.poll() is not None,
                            HEALTHY_TIMEOUT_S):
                raise RuntimeError(f"not healthy in {HEALTHY_TIMEOUT_S:g} s (see {log.name})")
            if proc.poll() is not None:
                raise RuntimeError(f"twostep serve exited ({proc.returncode}); see {log.name}")
            if not wait_for(lambda nodes=nodes: tail_running() == nodes, 120):
                raise RuntimeError(f"EdgeTail did not reach {nodes} running replicas")
            plans = device_plans(url, SeriesStore.open(series), args.devices)
            print(f"{series}: {nodes} edge node(s), {len({(p['variant'], p['split']) for p in plans})} "
                  "distinct plans", flush=True)
            row: dict = {}
            for transport in args.transports:
                drive(url, plans, WARM_S, transport)
                light = drive(url, plans[:LIGHT_DEVICES], LIGHT_S, transport, fps=LIGHT_FPS)
                saturated = measured(url, plans, args.seconds, transport)
                show(f"{transport}: light ({LIGHT_DEVICES} devices, {LIGHT_FPS:g}/s)", light)
                show(f"{transport}: saturated ({args.devices} devices)", saturated)
                if transport not in fit:  # the fewest nodes measure the costs; the rest check
                    fit[transport] = (costs_of(light, saturated), saturated["cpu_ms_per_frame"]["host"])
                capacity = capacity_at(*fit[transport], nodes, os.cpu_count() or 1)[0]
                offered = args.paced_share * capacity
                paced = measured(url, plans, args.seconds, transport, fps=offered / len(plans))
                show(f"{transport}: paced at {offered:.0f}/s", paced)
                row[transport] = {"light": light, "saturated": saturated, "paced": paced}
            results["by_nodes"][nodes] = row
        finally:
            proc.terminate()  # `twostep serve` deletes its apps on SIGTERM
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
            if not wait_for(lambda: tail_running() == 0, 60):
                print("  EdgeTail still has replicas 60 s after twostep serve stopped", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", action="append", help="series directory (repeatable)")
    parser.add_argument("--report", metavar="FILE", help="only fit and check the model on a "
                        "capacity.json written before")
    parser.add_argument("--out", default="runs/bench-capacity")
    parser.add_argument("--nodes", default="1,2,4", help="edge nodes (= EdgeTail replicas) to measure at")
    parser.add_argument("--devices", type=int, default=16, help="devices of the saturating load")
    parser.add_argument("--seconds", type=float, default=15.0, help="per saturated and paced phase")
    parser.add_argument("--paced-share", type=float, default=0.6,
                        help="the paced load, as a share of the predicted capacity")
    parser.add_argument("--transports", default="http,stream", help="http, stream or both (comma)")
    parser.add_argument("--ingress", choices=("auto", "haproxy", "proxy"), default="auto")
    parser.add_argument("--worker-niceness", type=int, default=0, choices=range(0, 20), metavar="0-19",
                        help="niceness of Ray's workers (Ray's default 15; the devices here run at 0)")
    args = parser.parse_args()
    if args.report:
        path = Path(args.report)
        result = json.loads(path.read_text())
        check(result)
        path.write_text(json.dumps(result, indent=1, default=str))
        return 0
    if not args.series:
        parser.error("give --series DIR (or --report FILE)")
    nodes_list = sorted({int(n) for n in args.nodes.split(",")})
    if not nodes_list or nodes_list[0] < 1 or nodes_list[-1] > EDGE_NODES:
        parser.error(f"--nodes must be between 1 and {EDGE_NODES}, got {args.nodes!r}")
    args.transports = [t for t in args.transports.split(",") if t]
    if not set(args.transports) <= {"http", "stream"}:
        parser.error(f"--transports takes http and/or stream, got {args.transports!r}")
    for series in args.series:
        if not (Path(series) / "manifest.json").is_file():
            parser.error(f"--series {series!r} is not a series directory (no manifest.json)")
    stoppable()
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    ingress, env, line = choose_ingress(args.ingress)
    print(line, flush=True)
    import ray

    result = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "ingress": ingress,
              "worker_niceness": args.worker_niceness,
              "devices": args.devices, "seconds": args.seconds, "edge_nodes": EDGE_NODES, "series": []}
    # Ray starts its workers at nice 15 (below its own daemons); here the devices share the cores
    # at nice 0 and would take them from the replicas first, which no device does to an edge node
    env = {**env, "RAY_worker_niceness": str(args.worker_niceness)}
    with AutoscalingCluster(log_dir=str(out), env=env, min_workers={"edge": EDGE_NODES}) as cluster:
        ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
        stoppable()  # again: ray.init installs its own SIGTERM handler
        try:
            if not wait_for(lambda: sum(1 for n in ray.nodes() if n["Alive"]
                                        and n["Resources"].get("edge")) >= EDGE_NODES, 180):
                raise RuntimeError(f"{EDGE_NODES} edge nodes did not come up in 180 s")
            port = free_port()  # one for the whole run: Serve keeps the port it started on
            for series in args.series:
                result["series"].append(run_series(series, cluster, port, nodes_list, args, out))
                (out / "capacity.json").write_text(json.dumps(result, indent=1, default=str))
        finally:
            ray.shutdown()
    check(result)
    (out / "capacity.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out / 'capacity.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
