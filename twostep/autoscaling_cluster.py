"""An autoscaling Ray cluster on one machine whose worker node types are cluster.yaml's.

Ray's own autoscaler (the v1 monitor the head starts with `--autoscaling-config`) launches and
removes the workers through Ray's fake multi-node provider (`provider: type: fake_multinode`):
each worker "node" is a real raylet on this machine, started with the resources its node type
declares and stopped when the autoscaler removes it. The node types come from `cluster.yaml`
(`fake_config`); what differs from a real cluster is fitted to one small machine:

- CPUs: a node type's CPUs are divided by `CPU_DIVISOR` and rounded up (a 4-CPU g5.xlarge
  becomes 1 CPU, a 2-CPU t3.large 1 CPU), so that one node claims no more than one of this
  machine's cores. GPUs and custom resources are kept as declared: a GPU here is only a resource
  that trials reserve (no device behind it; torch finds no CUDA and runs on the CPU).
- every worker's object store is `OBJECT_STORE_BYTES` (Ray's default is 30% of the memory for
  each raylet);
- `idle_timeout_minutes` is read as seconds (10 minutes become 10 s);
- `AutoscalingCluster(min_workers={"edge": 0})` overrides a type's `min_workers` for that run
  only (bench/bench_autoscale_serve.py starts with no edge node); cluster.yaml is not changed;
- the head is Ray's fake head type (`ray.head.default`, the only one the provider knows) with no
  CPUs, so that every trial runs on a worker the autoscaler launched.

`with AutoscalingCluster() as cluster:` ... `cluster.address` is HOST:PORT, `cluster.config` the
autoscaling config it runs. Everything it started (head, monitor, the workers the monitor
launched and their Ray workers) stops on exit; nothing else is touched (no `ray stop`).

Used by `bench/bench_autoscale.py` and `bench/bench_autoscale_serve.py`;
`tests/deploy/test_autoscaling_config.py` holds the generated config to cluster.yaml.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from twostep.local_cluster import (
    ALIVE_NODES_SCRIPT,
    START_ATTEMPTS,
    NodeExited,
    PortTaken,
    cluster_env,
    log_tail,
    ray_executable,
)
from twostep.ports import free_port, is_free

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
CPU_DIVISOR = 4
OBJECT_STORE_BYTES = 200 * 2**20
FAKE_HEAD_TYPE = "ray.head.default"  # the type FakeMultiNodeProvider gives its head node
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0

# The fake provider keys nodes by node id, not IP (every node here has the same IP): with
# use_node_id_as_ip the autoscaler matches its load metrics to them. Without it every launched
# node stays "Pending: uninitialized" to the autoscaler: it is never removed, and work waiting
# for resources launches no more nodes (the pending one is counted on to take it). Without
# launch_multiple the provider starts one node for a launch of N, and the autoscaler, after
# counting N, launched more later than the work asked for (3 nodes for 2 pending trials).
# No SSH updaters and no launch-config hashes for local raylets.
FAKE_PROVIDER = {"type": "fake_multinode", "use_node_id_as_ip": True, "launch_multiple": True,
                 "disable_node_updaters": True, "disable_launch_config_check": True}
# Keys the v1 autoscaler requires and a fake cluster leaves empty.
EMPTY_KEYS = {"auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
              "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
              "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
              "worker_setup_commands": [], "head_start_ray_commands": [],
              "worker_start_ray_commands": []}
AUTOSCALER_ENV = {
    "RAY_FAKE_CLUSTER": "1",  # FakeMultiNodeProvider refuses to start without it
    "AUTOSCALER_UPDATE_INTERVAL_S": "1",
    # v2 fills the config from fake_multi_node/example.yaml, which Ray's wheel does not ship.
    "RAY_enable_autoscaler_v2": "0",
}


def scaled_cpus(cpus: float) -> int:
    return math.ceil(cpus / CPU_DIVISOR)


def worker_types(cluster: dict) -> dict[str, dict]:
    """cluster.yaml's worker node types as `fake_config` runs them: the same names, worker
    bounds and resources, with CPUs scaled and the object store added."""
    types = {}
    for name, spec in cluster["available_node_types"].items():
        if name == cluster["head_node_type"]:
            continue
        resources = dict(spec["resources"])
        if "CPU" in resources:
            resources["CPU"] = scaled_cpus(resources["CPU"])
        types[name] = {"resources": {**resources, "object_store_memory": OBJECT_STORE_BYTES},
                       "node_config": {}, "min_workers": spec.get("min_workers", 0),
                       "max_workers": spec["max_workers"]}
    return types


def fake_config(cluster: dict, gcs_address: str, min_workers: dict[str, int] | None = None) -> dict:
    """The autoscaling config for a fake cluster of `cluster`'s worker node types whose head's
    GCS listens at `gcs_address`; `min_workers` overrides some types' `min_workers` for one run
    (`{"edge": 0}`: no edge node until work asks for one), within their `max_workers`."""
    types = worker_types(cluster)
    for name, count in (min_workers or {}).items():
        if name not in types:
            raise ValueError(f"min_workers names {name!r}, not a worker node type of the cluster "
                             f"({', '.join(types)})")
        if not 0 <= count <= types[name]["max_workers"]:
            raise ValueError(f"min_workers of {name!r} must be in 0..{types[name]['max_workers']}, "
                             f"got {count}")
        types[name]["min_workers"] = count
    return {
        **EMPTY_KEYS,
        "cluster_name": f"{cluster['cluster_name']}-fake",
        "max_workers": cluster["max_workers"],
        "upscaling_speed": cluster.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": cluster["idle_timeout_minutes"] / 60,
        "provider": {**FAKE_PROVIDER, "gcs_address": gcs_address},
        "head_node_type": FAKE_HEAD_TYPE,
        "available_node_types": {
            FAKE_HEAD_TYPE: {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            **types},
    }


def _processes() -> dict[int, tuple[int, int, bytes]]:
    """Every live process on this machine: pid -> (parent pid, start time, command line)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # fields[0] is field 3 of proc(5): the state
        if fields[0] != "Z":
            table[int(entry.name)] = (int(fields[1]), int(fields[19]), cmdline)
    return table


def cluster_processes(head_pid: int, temp_dir: str) -> dict[int, int]:
    """The live processes of a cluster, pid -> start time: the head's descendants, and any
    process whose command line names the cluster's temp dir (a worker raylet whose parent, the
    monitor, is gone)."""
    table = _processes()
    found = {pid for pid, (_, _, cmdline) in table.items() if temp_dir.encode() in cmdline}
    found.add(head_pid)
    grew = True
    while grew:
        children = {pid for pid, (ppid, _, _) in table.items() if ppid in found} - found
        found |= children
        grew = bool(children)
    return {pid: table[pid][1] for pid in found if pid in table}


def _still_running(pids: dict[int, int]) -> dict[int, int]:
    """Those of `pids` still alive (the same start time: not a new process given the pid)."""
    table = _processes()
    return {pid: start for pid, start in pids.items() if pid in table and table[pid][1] == start}


class AutoscalingCluster:
    """`with AutoscalingCluster() as cluster:` ... `cluster.address` is HOST:PORT."""

    def __init__(self, cluster_yaml: str | os.PathLike = CLUSTER_YAML, log_dir: str | None = None,
                 env: dict[str, str] | None = None, min_workers: dict[str, int] | None = None):
        self.config_source = Path(cluster_yaml)
        self.min_workers = dict(min_workers or {})
        self.temp_dir = ""
        self._log_dir = log_dir
        self._head: subprocess.Popen | None = None
        self._log = None
        self.env = {**cluster_env(), **AUTOSCALER_ENV, **(env or {})}

    def __enter__(self) -> AutoscalingCluster:
        for _ in range(START_ATTEMPTS - 1):
            try:
                return self._started()
            except (PortTaken, NodeExited) as err:
                print(f"{err}\nstarting the cluster again on fresh ports", file=sys.stderr)
        return self._started()

    def _started(self) -> AutoscalingCluster:
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)  # no half-started cluster left behind
            raise
        return self

    def _start(self) -> None:
        # Ray's socket paths must stay short: a temp dir of its own directly under /tmp. It also
        # names every process of this cluster, which is how the workers are found on exit.
        self.temp_dir = tempfile.mkdtemp(prefix="tsa", dir="/tmp")
        self.log_dir = Path(self._log_dir or self.temp_dir)
        self.port, client_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        for port in (self.port, client_port):
            if not is_free(port):
                raise PortTaken(f"port {port}, picked free for the head, is taken now")
        cluster = yaml.safe_load(self.config_source.read_text())
        self.config = fake_config(cluster, self.address, self.min_workers)
        self.config_path = config_path = self.log_dir / "autoscaling.yaml"
        config_path.write_text(json.dumps(self.config, indent=1))
        self._log = open(self.log_dir / "head.log", "w")  # noqa: SIM115 - closed in __exit__
        self._head = subprocess.Popen(
            [ray_executable(), "start", "--head", "--block", "--port", str(self.port),
             "--node-ip-address", "127.0.0.1", "--num-cpus", "0",
             "--object-store-memory", str(OBJECT_STORE_BYTES),
             "--autoscaling-config", str(config_path), "--include-dashboard", "false",
             "--dashboard-port", str(free_port()),
             "--ray-client-server-port", str(client_port), "--disable-usage-stats",
             "--temp-dir", self.temp_dir,
             "--dashboard-agent-listen-port", str(free_port()),
             "--metrics-export-port", str(free_port()),
             "--runtime-env-agent-port", str(free_port())],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self._wait_head()

    def _wait_head(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline:
            if self._head.poll() is not None:
                self._log.flush()
                raise NodeExited(f"the head exited ({self._head.returncode}); the end of "
                                 f"{self._log.name}:\n{log_tail(Path(self._log.name))}")
            try:
                result = subprocess.run([sys.executable, "-c", ALIVE_NODES_SCRIPT, self.address],
                                        capture_output=True, text=True, env=self.env, timeout=20)
            except subprocess.TimeoutExpired:
                last = "ray.init did not answer in 20 s"
                continue
            if result.returncode == 0:
                return
            last = result.stderr[-300:]
            time.sleep(1.0)
        raise RuntimeError(f"the head did not start in {START_TIMEOUT_S:g} s: {last}")

    def __exit__(self, *exc) -> None:
        try:
            if self._head is not None:
                self._stop(cluster_processes(self._head.pid, self.temp_dir))
                self._head.wait(timeout=STOP_TIMEOUT_S)
                self._head = None
        finally:  # a stop that failed still closes the log and removes the temp dir
            if self._log is not None:
                self._log.close()
                self._log = None
            if self.temp_dir:
                if self._log_dir is not None:
                    for log in Path(self.temp_dir).glob("session_*/logs/monitor.*"):
                        shutil.copy(log, self.log_dir / log.name)
                shutil.rmtree(self.temp_dir, ignore_errors=True)
                self.temp_dir = ""

    def _stop(self, pids: dict[int, int]) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while time.monotonic() < deadline:
                self._head.poll()  # reap the head, or it stays a zombie child of ours
                pids = _still_running(pids)
                if not pids:
                    return
                time.sleep(0.2)
