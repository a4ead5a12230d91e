"""A two-node Ray cluster on one machine whose worker cannot see the driver's files.

The head node (`--num-cpus 0`, resource `device`) and a worker raylet (`--num-cpus N`,
resource `edge`) run on this machine; the worker starts inside its own mount namespace with a
tmpfs over `hidden_dir`, so its trials and replicas see an empty directory where the driver
keeps its runs, as on a real cluster without a shared file system. A directory outside
`hidden_dir` stands in for shared storage (NFS). Needs root (mount namespaces); `permitted()`
says whether this machine allows it, and why not.

Used by the multi-node integration test and `bench/bench_multinode.py`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twostep.ports import free_port, is_free
from twostep.ray_env import OWN_CLUSTER_ENV, apply_ray_env

START_TIMEOUT_S = 90.0
PROBE_TIMEOUT_S = 20.0
START_ATTEMPTS = 3  # a port picked free can be taken before Ray binds it
LOG_TAIL_LINES = 20
# `python -c ALIVE_NODES_SCRIPT ADDRESS` prints how many nodes of the cluster at ADDRESS are alive.
ALIVE_NODES_SCRIPT = ("import logging, sys, ray; ray.init(address=sys.argv[1], logging_level=logging.ERROR); "
                      "print(sum(1 for n in ray.nodes() if n['Alive']))")


def ray_executable() -> str:
    return str(Path(sys.executable).with_name("ray"))


def permitted() -> str | None:
    """None if an isolated worker can be started here, else the reason it cannot."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = tempfile.mkdtemp(prefix="twostep-ns-probe-")
    try:
        result = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             f"mount -t tmpfs tmpfs {probe} && test ! -e {probe}/marker"],
            capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unshare failed: {err}"
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    if result.returncode != 0:
        return f"mount namespaces are not permitted here: {result.stderr.strip() or result.returncode}"
    return None


def cluster_env() -> dict[str, str]:
    env = apply_ray_env(dict(os.environ))
    env.update(OWN_CLUSTER_ENV)
    env.pop("RAY_ADDRESS", None)
    return env


class NodeExited(RuntimeError):
    """A Ray node process ended while the cluster was starting."""


class PortTaken(RuntimeError):
    """A port picked free for the head was taken before the head started."""


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as err:
        return f"(no log: {err})"


class TwoNodeCluster:
    """`with TwoNodeCluster(hidden_dir) as cluster:` ... `cluster.address` is HOST:PORT."""

    def __init__(self, hidden_dir: str | os.PathLike, worker_cpus: int = 2, log_dir: str | None = None,
                 env: dict[str, str] | None = None):
        self.hidden_dir = Path(hidden_dir).resolve()
        self.worker_cpus = worker_cpus
        self._log_dir = log_dir  # None: the logs go in each session's temp dir
        self.temp_dir = ""
        self._fresh_session()
        self._procs: list[subprocess.Popen] = []
        self._logs: list = []
        self.env = {**cluster_env(), **(env or {})}

    def _ports(self) -> list[str]:
        # Every port Ray would otherwise take at a fixed default (the client server's 10001) or
        # pick itself is chosen free here, so a second Ray on this machine cannot collide.
        return ["--dashboard-agent-listen-port", str(free_port()),
                "--metrics-export-port", str(free_port()),
                "--runtime-env-agent-port", str(free_port())]

    def _start(self, argv: list[str], name: str) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "w")  # noqa: SIM115 - closed in _stop_nodes
        self._logs.append(log)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                start_new_session=True)
        self._procs.append(proc)
        return proc

    def __enter__(self) -> TwoNodeCluster:
        try:
            self._start_with_retries()
        except BaseException:
            self.__exit__(None, None, None)  # no half-started cluster left behind
            raise
        return self

    def _start_with_retries(self) -> None:
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start_nodes()
                return
            except (PortTaken, NodeExited) as err:
                if attempt == START_ATTEMPTS:
                    raise
                print(f"{err}\nstarting the cluster again on fresh ports", file=sys.stderr)
                self._stop_nodes()
                self._fresh_session()

    def _fresh_session(self) -> None:
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        # Ray's socket paths must stay short: a temp dir of its own directly under /tmp.
        self.temp_dir = tempfile.mkdtemp(prefix="tsn", dir="/tmp")
        self.log_dir = Path(self._log_dir or self.temp_dir)
        self.port = free_port()
        self.client_server_port = free_port()
        self.address = f"127.0.0.1:{self.port}"

    def _start_nodes(self) -> None:
        # A head whose port is taken fails only after Ray's own timeouts (26-60 s, measured):
        # looking first costs nothing; the race left after the look is caught as NodeExited.
        for port in (self.port, self.client_server_port):
            if not is_free(port):
                raise PortTaken(f"port {port}, picked free for the head, is taken now")
        ray = ray_executable()
        self._start([ray, "start", "--head", "--block", "--port", str(self.port),
                     "--node-ip-address", "127.0.0.1", "--num-cpus", "0",
                     "--resources", '{"device": 1}', "--include-dashboard", "false",
                     "--ray-client-server-port", str(self.client_server_port),
                     "--disable-usage-stats", "--temp-dir", self.temp_dir, *self._ports()], "head")
        self._wait_nodes(1)
        worker = " ".join([ray, "start", "--block", "--address", self.address,
                           "--node-ip-address", "127.0.0.1", "--num-cpus", str(self.worker_cpus),
                           "--resources", "'{\"edge\": 1}'", "--disable-usage-stats", *self._ports()])
        self._start(["unshare", "-m", "--propagation", "private", "sh", "-c",
                     f"mount -t tmpfs tmpfs {shlex.quote(str(self.hidden_dir))} && exec {worker}"],
                    "worker")
        self._wait_nodes(2)

    def _wait_nodes(self, count: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline:
            for proc, log in zip(self._procs, self._logs, strict=True):
                if proc.poll() is not None:
                    log.flush()
                    raise NodeExited(f"a Ray node exited ({proc.returncode}); the end of {log.name}:\n"
                                     f"{log_tail(Path(log.name))}")
            try:
                result = subprocess.run([sys.executable, "-c", ALIVE_NODES_SCRIPT, self.address],
                                        capture_output=True,
                                        text=True, env=self.env, timeout=PROBE_TIMEOUT_S)
            except subprocess.TimeoutExpired:  # a head whose GCS failed hangs ray.init; look again
                last = f"ray.init did not answer in {PROBE_TIMEOUT_S:g} s"
                continue
            last = result.stdout.strip().splitlines()[-1:] or result.stderr[-300:]
            if result.returncode == 0 and result.stdout.strip().endswith(str(count)):
                return
            time.sleep(1.0)
        raise RuntimeError(f"the cluster did not reach {count} node(s) in {START_TIMEOUT_S:g} s: {last}")

    def __exit__(self, *exc) -> None:
        self._stop_nodes()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _stop_nodes(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self._procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for log in self._logs:
            log.close()
        self._procs, self._logs = [], []
