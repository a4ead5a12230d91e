"""A real bandwidth-limited link on one machine: two network namespaces joined by a veth pair,
each direction shaped with `tc ... tbf`. Needs root and iproute2; `available()` says whether
this machine permits it. Everything made here is removed on exit.

Note: tbf lets one burst (here one full Ethernet frame, `burst_bytes`) through at line rate
after idle, so a message smaller than that is not slowed by itself. `twostep bench` spends the
burst with one filler frame right before each request, so the request pays its bytes at the
link rate as on a real link.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


def available() -> bool:
    """True when network namespaces can be made here (root, iproute2, tc)."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
        return False
    name = f"tsprobe{uuid.uuid4().hex[:6]}"
    try:
        _run("ip", "netns", "add", name)
    except (subprocess.CalledProcessError, OSError):
        return False
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return True


class ShapedLink:
    """`device` and `edge` namespaces; `device_ip`/`edge_ip` on the veth pair.

    Use as a context manager; `set_rate(bps)` changes both directions at run time.
    """

    def __init__(self, bandwidth_bps: float, subnet: str = "10.213.77", mtu: int = 1500):
        if not bandwidth_bps > 0:
            raise ValueError(f"bandwidth must be > 0 bit/s, got {bandwidth_bps}")
        tag = uuid.uuid4().hex[:6]
        self.device, self.edge = f"tsdev{tag}", f"tsedge{tag}"
        self.device_if, self.edge_if = f"tsd{tag}", f"tse{tag}"
        self.device_ip, self.edge_ip = f"{subnet}.1", f"{subnet}.2"
        self.mtu = mtu
        self.bandwidth_bps = bandwidth_bps
        self._made: list[str] = []
        self._shaped = False

    def __enter__(self) -> ShapedLink:
        try:
            for ns in (self.device, self.edge):
                _run("ip", "netns", "add", ns)
                self._made.append(ns)
                _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "link", "add", self.device_if, "type", "veth", "peer", "name", self.edge_if)
            for ns, dev, ip in ((self.device, self.device_if, self.device_ip),
                                (self.edge, self.edge_if, self.edge_ip)):
                _run("ip", "link", "set", dev, "netns", ns)
                _run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
                _run("ip", "-n", ns, "link", "set", dev, "mtu", str(self.mtu), "up")
            self.set_rate(self.bandwidth_bps)
        except BaseException:
            self.close()
            raise
        return self

    @property
    def burst_bytes(self) -> int:
        """The token bucket's size: one full frame (MTU plus the 14-byte Ethernet header),
        the least tbf accepts."""
        return self.mtu + 14

    def set_rate(self, bandwidth_bps: float) -> None:
        """Shape both directions to `bandwidth_bps` (token bucket, one-frame burst)."""
        if not bandwidth_bps > 0:
            raise ValueError(f"bandwidth must be > 0 bit/s, got {bandwidth_bps}")
        self.bandwidth_bps = bandwidth_bps
        rate = f"{int(bandwidth_bps)}bit"
        burst = str(self.burst_bytes)
        # `change` keeps what is queued (a trace steps the rate under frames in flight); the
        # first time there is no tbf to change
        verb = "change" if self._shaped else "replace"
        for ns, dev in ((self.device, self.device_if), (self.edge, self.edge_if)):
            _run("ip", "netns", "exec", ns, "tc", "qdisc", verb, "dev", dev, "root", "tbf",
                 "rate", rate, "burst", burst, "latency", "2s")
        self._shaped = True

    def command(self, namespace: str, argv: list[str]) -> list[str]:
        """`argv` run inside `namespace` (self.device or self.edge)."""
        return ["ip", "netns", "exec", namespace, *argv]

    def close(self) -> None:
        for ns in self._made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._made.clear()

    def __exit__(self, *exc) -> None:
        self.close()
