"""`twostep serve --address` on a cluster that Ray's autoscaler grows and shrinks: serving
scales out and back.

The cluster (twostep/autoscaling_cluster.py) runs on this machine with cluster.yaml's node types,
but with the `edge` type's min_workers set to 0 for this run: no edge node at first. Builds a
tiny series in OUT, then:

1. `twostep serve SERIES --address ADDRESS --placement resources`: the Router and EdgeTail ask
   for `edge`, DeviceHead for `device` (with no CPU: `--head-cpus 0`); the command says they
   wait for the autoscaler, which launches an edge and a device node; the app becomes healthy.
   Each EdgeTail replica reserves 0.6 CPU (`--replica-cpus`) and an edge node offers 1 here, so
   one EdgeTail replica fits a node (beside the Router's 0.1): a second replica needs a second
   edge node. (The `edge` share each replica asks for is a sliver, serve/app.py RESOURCE_AMOUNT:
   placement only.)
2. scale-out: `--devices` devices send frames back to back over HTTP (bench/bench_load.py's
   `run_load`, the device client resending a frame whose replica died) until a frame is answered
   by a replica that was not there before the load (the answer names its replica) and for
   `--hold-s` more; EdgeTail's autoscaler (`--signal`, default Serve's requests in flight,
   target 2) asks for a second replica, which waits for the cluster autoscaler to add an edge
   node. A replica holds at most 2 frames here (TAIL_MAX_ONGOING): Serve sends a frame to a
   replica without its variant only when those with it are full;
3. scale-back: one device keeps sending (5 frames/s) while EdgeTail goes back to one replica and
   the autoscaler removes the idle edge node (idle timeout 10 s here);
4. kill (unless `--no-kill`): the heavy load again until a new replica answers, then the raylet
   of that replica's edge node is killed (SIGKILL) under load; the load goes on `--after-kill-s`
   (Serve finds the replica dead and starts a replacement, for which the autoscaler adds a node),
   then scale-back again;
5. prints the timeline (seconds since the head was started), the autoscaler's decisions and the
   frames lost (sent and never answered) per phase; `--out` gets result.json and the logs.

    .venv/bin/python bench/bench_autoscale_serve.py --out runs/bench-autoscale-serve
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_autoscale import NodeWatch, autoscaler_events, node_type  # noqa: E402
from bench_load import TAIL_APP, mixed_plans, run_load  # noqa: E402

from twostep.autoscaling_cluster import AutoscalingCluster, _processes, cluster_processes  # noqa: E402
from twostep.ports import free_port  # noqa: E402

TWOSTEP = str(Path(sys.executable).with_name("twostep"))
TAIL_CPUS = 0.6  # of an edge node's 1 CPU here: one EdgeTail replica per node, beside the Router
HEALTHY_TIMEOUT_S = 300.0
PHASE_TIMEOUT_S = 150.0
# Requests one EdgeTail replica holds (HTTP frames + 1 session slot): Serve routes a frame to the
# replicas that hold its variant (the multiplexed model id) and to another only when those are
# full, so a new replica gets frames only when the old ones hold this many. With Serve's
# default (`tail_max_ongoing_requests` 4 + 256 session slots) the old replica is never full here
# and no frame reached a new one in 100 s of load.
TAIL_MAX_ONGOING = 2
LIGHT_PACE_S = 0.2  # the one device of the scale-back phase: about 5 frames/s
FOREVER = 10**9  # frames per device: the phases end on their own condition


class Timeline:
    """Events in seconds since t0, printed as they come."""

    def __init__(self, t0: float):
        self.t0, self.events = t0, []

    def now(self) -> float:
        return time.monotonic() - self.t0

    def add(self, message: str) -> float:
        at = self.now()
        self.events.append((at, message))
        print(f"  {at:6.1f} {message}", flush=True)
        return at


class ReplicaWatch(threading.Thread):
    """Polls Serve's status of EdgeTail: every change of its replica states goes to the
    timeline; `count()` is the replicas RUNNING, `total()` all of them (pending included)."""

    def __init__(self, timeline: Timeline, period_s: float = 0.25):
        super().__init__(daemon=True)
        self.timeline, self.period_s = timeline, period_s
        self.states: dict = {}
        self.history: list[tuple[float, dict]] = []
        self.done = threading.Event()

    def run(self) -> None:
        from ray import serve

        while not self.done.is_set():
            with contextlib.suppress(Exception):  # a poll that fails says nothing
                app = serve.status().applications.get(TAIL_APP)
                states = {str(getattr(k, "value", k)): v for k, v in
                          (app.deployments["EdgeTail"].replica_states if app else {}).items()}
                if states != self.states:
                    self.states = states
                    self.history.append((self.timeline.now(), states))
                    self.timeline.add(f"EdgeTail replicas {json.dumps(states, sort_keys=True)}")
            self.done.wait(self.period_s)

    def first_after(self, since: float, condition) -> float | None:
        """When, after `since`, the replica states first met `condition(states)`."""
        return next((at for at, states in self.history if at >= since and condition(states)), None)

    def count(self) -> int:
        return self.states.get("RUNNING", 0)

    def total(self) -> int:
        return sum(self.states.values())


def stoppable() -> None:
    """SIGINT (ignored in a background job) and SIGTERM raise KeyboardInterrupt: the load stops,
    `twostep serve` is stopped and the cluster torn down."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def wait_for(condition, timeout_s: float, period_s: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(period_s)
    return True


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v1/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def serve_argv(series: str, address: str, port: int, config: Path, args) -> list[str]:
    return [TWOSTEP, "serve", series, "--address", address, "--port", str(port),
            "--proxy-location", "HeadOnly", "--placement", "resources", "--head-cpus", "0",
            "--replica-cpus", str(TAIL_CPUS), "--tail-max-replicas", str(args.max_tails),
            "--tail-autoscaling-signal", args.signal, "--tail-target-ongoing-requests",
            str(args.target), "--ms-per-mmac", "20", "--cluster-config", str(config)] + (
            [] if args.serve_defaults else ["--tail-max-ongoing-requests", str(TAIL_MAX_ONGOING),
                                            "--stream-max-sessions", "1"])


def node_raylets(cluster: AutoscalingCluster, node_id: str) -> list[int]:
    """The raylet(s) of the fake node `node_id` (the provider starts it with that id)."""
    table = _processes()
    mine = cluster_processes(cluster._head.pid, cluster.temp_dir)
    found = []
    for pid in mine:
        cmdline = table.get(pid, (0, 0, b""))[2]
        if b"raylet" not in cmdline.split(b"\0")[0]:
            continue
        if node_id.encode() in cmdline:
            found.append(pid)
            continue
        with contextlib.suppress(OSError):
            if node_id.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(pid)
    return found


class Answers:
    """When each EdgeTail replica first answered (seconds since t0)."""

    def __init__(self, timeline: Timeline):
        self.timeline = timeline
        self.first: dict[str, float] = {}
        self.total = 0
        self.lock = threading.Lock()

    def __call__(self, answer: dict) -> None:
        with self.lock:
            self.total += 1
        replica = answer.get("replica", "?")
        if replica not in self.first:
            with self.lock:
                if replica not in self.first:
                    self.first[replica] = self.timeline.add(f"first answer from replica {replica}")

    def new_since(self, known: set[str]) -> list[str]:
        return [r for r in self.first if r not in known]


def summary_of(result: dict) -> dict:
    sent = result["requests"] + result["errors"]
    return {"sent": sent, "answered": result["requests"], "lost": result["errors"],
            "error_samples": result["error_samples"], "wall_s": round(result["wall_s"], 1),
            "frames_per_s": round(result["rps"], 1), "p50_ms": round(result["p50"], 1),
            "p99_ms": round(result["p99"], 1)}


def main() -> int:  # noqa: PLR0915 - one bench, one sequence of phases
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-autoscale-serve")
    parser.add_argument("--series", help="series directory (default: a tiny one built in OUT)")
    parser.add_argument("--devices", type=int, default=8, help="devices of the heavy load")
    parser.add_argument("--max-tails", type=int, default=2, help="EdgeTail's autoscaling maximum")
    parser.add_argument("--hold-s", type=float, default=10.0,
                        help="load kept on after a new replica answered")
    parser.add_argument("--signal", choices=("frames", "requests", "work"), default="requests",
                        help="EdgeTail's autoscaling signal (default requests: Serve's own, counted "
                             "where the proxy's handle queues them)")
    parser.add_argument("--target", type=float, default=2.0,
                        help="EdgeTail's autoscaling target per replica (frames or requests)")
    parser.add_argument("--after-kill-s", type=float, default=30.0,
                        help="load kept on after the kill: long enough for Serve to find the replica "
                             "dead (about 14 s here) and start its replacement on a new node")
    parser.add_argument("--no-kill", action="store_true", help="skip the node-kill phase")
    parser.add_argument("--serve-defaults", action="store_true",
                        help="twostep's own max_ongoing_requests and sessions per replica (a new "
                             "replica gets frames once it loaded the variants its peers hold)")
    args = parser.parse_args()
    stoppable()
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    bench_start = time.monotonic()
    series = args.series
    if series is None:
        from synthetic_series import make_tiny_series

        series = str(make_tiny_series(out / "series").directory)
        print(f"tiny series: {time.monotonic() - bench_start:.1f} s", flush=True)
    from pipeline.series import SeriesStore

    plans = mixed_plans(SeriesStore.open(series), args.devices)

    import ray

    t0, wall0 = time.monotonic(), time.time()
    timeline = Timeline(t0)
    result: dict = {"date": time.strftime("%Y-%m-%d"), "devices": args.devices,
                    "max_tails": args.max_tails, "phases": {}}
    serve_proc = None
    watch = replicas = None
    with AutoscalingCluster(log_dir=str(out), min_workers={"edge": 0}) as cluster:
        try:
            types = cluster.config["available_node_types"]
            timeline.add(f"head up at {cluster.address} (edge min_workers 0)")
            ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
            stoppable()  # again: ray.init installs its own SIGTERM handler
            watch = NodeWatch(t0)
            watch.start()
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            argv = serve_argv(series, cluster.address, port, cluster.config_path, args)
            result["serve_argv"] = argv[1:]
            serve_log = open(out / "serve.log", "w")  # noqa: SIM115 - closed with the process
            serve_proc = subprocess.Popen(argv, stdout=serve_log, stderr=subprocess.STDOUT,
                                          env=cluster.env, start_new_session=True)
            timeline.add(f"twostep serve started (pid {serve_proc.pid}, port {port})")
            replicas = ReplicaWatch(timeline)
            replicas.start()
            if not wait_for(lambda: healthy(url) or serve_proc.poll() is not None, HEALTHY_TIMEOUT_S):
                raise RuntimeError(f"not healthy in {HEALTHY_TIMEOUT_S:g} s (see {out}/serve.log)")
            if serve_proc.poll() is not None:
                raise RuntimeError(f"twostep serve exited ({serve_proc.returncode}); see {out}/serve.log")
            result["healthy_s"] = timeline.add("app healthy (GET /v1/health 200)")
            wait_for(lambda: replicas.count() >= 1, 60)
            answers = Answers(timeline)
            run_load(url, plans[:2], 3, 60, on_answer=answers)  # warm-up: the variants loaded
            wait_for(lambda: replicas.count() == 1 and replicas.total() == 1, 60)

            def scale_out(phase: str, kill: bool) -> dict:
                known = set(answers.first)
                stop = threading.Event()
                marks: dict = {}

                def during(_done) -> None:
                    marks["load_s"] = timeline.add(f"{phase}: load of {args.devices} devices starts")
                    try:
                        def progress() -> bool:
                            if int(timeline.now()) % 15 == 0:
                                print(f"  {timeline.now():6.1f} {_done[0]} frames answered", flush=True)
                            return bool(answers.new_since(known))

                        if not wait_for(progress, PHASE_TIMEOUT_S, period_s=1.0):
                            timeline.add(f"{phase}: no new replica answered in {PHASE_TIMEOUT_S:g} s")
                            return
                        new = answers.new_since(known)[0]
                        marks["new_replica"], marks["new_answer_s"] = new, answers.first[new]
                        if kill:
                            edges = [nid for nid, n in watch.nodes.items()
                                     if node_type(n["resources"], types) == "edge"
                                     and n["went_s"] is None and (n["came_s"] or 0) > marks["load_s"]]
                            pids = node_raylets(cluster, edges[-1]) if edges else []
                            if not pids:
                                timeline.add(f"{phase}: no raylet found for the new edge node {edges}")
                                return
                            for pid in pids:
                                os.kill(pid, signal.SIGKILL)
                            marks["killed_node"] = edges[-1]
                            marks["killed_s"] = timeline.add(
                                f"{phase}: killed the raylet of edge node {edges[-1][-5:]} (pid {pids})")
                            marks["answered_before_kill"] = answers.total
                        time.sleep(args.after_kill_s if kill else args.hold_s)
                        if kill:
                            marks["answered_after_kill"] = answers.total - marks.pop("answered_before_kill")
                    finally:
                        stop.set()

                r = run_load(url, plans, FOREVER, PHASE_TIMEOUT_S + args.after_kill_s + 60,
                             during=during, stop=stop, on_answer=answers)
                marks["load_end_s"] = timeline.add(f"{phase}: load stopped")
                return {**marks, **summary_of(r)}

            def scale_back(phase: str, since: float) -> dict:
                """One device keeps sending while EdgeTail goes back to one replica and the extra
                edge nodes are removed."""
                stop = threading.Event()
                marks: dict = {}

                def edges_up() -> int:
                    return sum(1 for n in watch.nodes.values() if n["went_s"] is None
                               and node_type(n["resources"], types) == "edge")

                def during(_done) -> None:
                    try:
                        if wait_for(lambda: replicas.count() == 1 and replicas.total() == 1,
                                    PHASE_TIMEOUT_S):
                            marks["one_replica_s"] = timeline.add(f"{phase}: EdgeTail back to 1 replica")
                        if wait_for(lambda: edges_up() <= 1, PHASE_TIMEOUT_S):
                            marks["one_edge_node_s"] = timeline.add(f"{phase}: one edge node left")
                    finally:
                        stop.set()

                r = run_load(url, plans[:1], FOREVER, 2 * PHASE_TIMEOUT_S + 60, during=during,
                             stop=stop, on_answer=answers, pace_s=LIGHT_PACE_S)
                for key in ("one_replica_s", "one_edge_node_s"):
                    if key in marks:
                        marks[key.replace("_s", "_after_load_s")] = round(marks[key] - since, 1)
                return {**marks, **summary_of(r)}

            result["phases"]["scale-out"] = up = scale_out("scale-out", kill=False)
            result["phases"]["scale-back"] = scale_back("scale-back", up["load_end_s"])
            if not args.no_kill:
                result["phases"]["kill"] = killed = scale_out("kill", kill=True)
                result["phases"]["after-kill"] = scale_back("after-kill", killed["load_end_s"])
        finally:
            if serve_proc is not None:
                if serve_proc.poll() is None:
                    serve_proc.send_signal(signal.SIGINT)  # deletes its apps, as Ctrl-C would
                    try:
                        serve_proc.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        serve_proc.kill()
                        serve_proc.wait()
                timeline.add(f"twostep serve stopped ({serve_proc.returncode})")
            for thread in (replicas, watch):
                if thread is not None:
                    thread.done.set()
                    thread.join(timeout=5)
            ray.shutdown()

    print("\nnode timeline (seconds since the head was started):")
    nodes = []
    for nid, n in sorted(watch.nodes.items(), key=lambda kv: kv[1]["came_s"] or 0):
        kind = node_type(n["resources"], types)
        nodes.append({"node": nid, "type": kind, "came_s": n["came_s"], "went_s": n["went_s"]})
        came = f"came {n['came_s']:6.1f}" if n["came_s"] is not None else "came  (dead)"
        went = "still up at the end" if n["went_s"] is None else f"went {n['went_s']:6.1f}"
        print(f"  {nid[-5:]} {kind:9} {came}, {went}")
    print("the autoscaler's decisions (its log):")
    decisions = autoscaler_events(out / "monitor.log", wall0) if (out / "monitor.log").is_file() else []
    for at, message in decisions:
        print(f"  {at:6.1f} {message}")
    result.update(nodes=nodes, autoscaler=decisions, timeline=timeline.events,
                  bench_wall_s=round(time.monotonic() - bench_start, 1))
    edges = [n for n in nodes if n["type"] == "edge"]
    result["first_edge_node_s"] = edges[0]["came_s"] if edges else None
    print("\nsummary:")
    print(f"  first edge node {result['first_edge_node_s'] or math.nan:.1f} s, app healthy "
          f"{result.get('healthy_s', math.nan):.1f} s")
    ok = True
    for name, phase in result["phases"].items():
        extra = ""
        if "new_answer_s" in phase:
            load = phase["load_s"]
            asked = replicas.first_after(load, lambda st: sum(st.values()) >= 2)
            running = replicas.first_after(load, lambda st: st.get("RUNNING", 0) >= 2)
            node = min((n["came_s"] for n in edges if (n["came_s"] or 0) > load), default=None)
            phase["after_load_s"] = {k: None if v is None else round(v - load, 1) for k, v in (
                ("second_replica_asked", asked), ("edge_node_came", node),
                ("second_replica_running", running), ("new_replica_answered", phase["new_answer_s"]))}
            phase["load_to_new_replica_s"] = phase["after_load_s"]["new_replica_answered"]
            extra += "; after the load began: " + ", ".join(
                f"{k.replace('_', ' ')} {v} s" for k, v in phase["after_load_s"].items())
        if "killed_s" in phase:
            extra += (f"; killed node {phase['killed_node'][-5:]} at {phase['killed_s']:.1f} s, "
                      f"{phase['answered_after_kill']} frames answered in the {args.after_kill_s:g} s after")
        if "one_edge_node_after_load_s" in phase:
            if "one_replica_s" in phase:
                phase["idle_to_node_released_s"] = round(phase["one_edge_node_s"] - phase["one_replica_s"], 1)
            extra += (f"; load end -> 1 replica {phase.get('one_replica_after_load_s')} s, "
                      f"-> extra edge node removed {phase['one_edge_node_after_load_s']} s "
                      f"(idle, its replica gone -> released {phase.get('idle_to_node_released_s')} s)")
        print(f"  {name:10} {phase['sent']} frames sent, {phase['answered']} answered, "
              f"{phase['lost']} lost{extra}")
        ok = ok and phase["lost"] == 0
    ok = ok and "new_answer_s" in result["phases"].get("scale-out", {}) \
        and "one_edge_node_s" in result["phases"].get("scale-back", {})
    print(f"  bench wall time {result['bench_wall_s']} s; {'OK' if ok else 'NOT OK'}")
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
