"""CPU seconds this machine's processes have used, by their role in serving (read from /proc).

Ray names its worker processes after the actor they run (`ray::ServeReplica:twostep-tail:EdgeTail`,
`ray::LinkBoard`, `ray::ServeController`, `ray::ProxyActor`), so a role is found from the
command line; HAProxy is `haproxy`; the calling process is the devices of a benchmark.
"""

from __future__ import annotations

import os
from collections import defaultdict

# first match wins: (substring of the command line, role)
ROLES = (("EdgeTail", "tail"), ("haproxy", "ingress"), ("ProxyActor", "ingress"),
         ("LinkBoard", "board"), ("ServeController", "controller"), ("Router", "router"),
         ("DeviceHead", "head"))
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def role_of(command: str) -> str:
    return next((role for key, role in ROLES if key in command), "other")


def _cpu_s(stat: str) -> float:
    """utime + stime of a /proc/PID/stat line (fields 14 and 15; the name in parentheses may hold
    spaces, so count from its closing parenthesis)."""
    fields = stat[stat.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def by_role() -> dict[str, tuple[str, float]]:
    """CPU seconds used so far: per process id (role, seconds), this process being `devices`,
    and `host` (every core's busy time, /proc/stat)."""
    seconds: dict[str, tuple[str, float]] = {}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                command = file.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as file:
                cpu = _cpu_s(file.read())
        except (OSError, IndexError, ValueError):
            continue  # gone between the listing and the read
        seconds[entry] = ("devices" if int(entry) == me else role_of(command), cpu)
    with open("/proc/stat") as file:
        user, nice, system, idle, iowait, *rest = (int(x) for x in file.readline().split()[1:9])
    seconds["host"] = ("host", (user + nice + system + sum(rest)) * TICK_S)
    return seconds


def spent(before: dict[str, tuple[str, float]], after: dict[str, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per role between two `by_role` readings, process by process (one that
    started in between counts from zero; one that ended takes its time with it: read around a
    steady phase)."""
    total: dict[str, float] = defaultdict(float)
    for key, (role, cpu) in after.items():
        total[role] += max(0.0, cpu - before.get(key, (role, 0.0))[1])
    return dict(sorted(total.items()))
