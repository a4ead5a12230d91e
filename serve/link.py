"""Link emulation for one-machine runs: the head-to-tail handoff as if over a slow link.

`LinkEmulator` is a first-in first-out shaper: a transfer of `n` bytes occupies the link for
`n * 8 / bandwidth` seconds after every transfer queued before it, then arrives one round-trip
time later (the request/response round trip the cost model charges once per request). Its
schedule is computed, not measured, so the time it reports for a transfer is exact and free of
event-loop jitter; the caller then sleeps that long. Bandwidth and RTT can change at run time;
transfers already scheduled keep their times. With no bandwidth set the link is not emulated.
The link can also replay a measured trace (`replay`, `pipeline.traces.Trace`, looping): a
transfer then takes the trace's rate integrated over its time on the wire, so one that starts in
a dip speeds up when the link comes back, as on a real link.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pipeline.cost import MAX_BANDWIDTH_BPS
from pipeline.traces import Trace

MAX_RTT_MS = 3_600_000.0


class LinkSaturated(RuntimeError):
    """A transfer would wait longer than the emulator's `max_delay_s` (the link is overloaded)."""


@dataclass(frozen=True)
class Transfer:
    """The emulated timing of one transfer, in seconds: queued, on the wire, round trip."""

    nbytes: int
    queue_s: float
    wire_s: float
    rtt_s: float

    @property
    def total_s(self) -> float:
        return self.queue_s + self.wire_s + self.rtt_s


def check_link_settings(bandwidth_bps: object, rtt_ms: object) -> tuple[float | None, float]:
    """Validated (bandwidth or None for off, RTT) or ValueError naming the bad value."""
    if bandwidth_bps is not None:
        if isinstance(bandwidth_bps, bool) or not isinstance(bandwidth_bps, int | float) or not (
            math.isfinite(bandwidth_bps) and 0 < bandwidth_bps <= MAX_BANDWIDTH_BPS
        ):
            raise ValueError(
                f"bandwidth_bps must be in (0, {MAX_BANDWIDTH_BPS:.0e}] bit/s or null (no "
                f"emulation), got {bandwidth_bps!r}"
            )
        bandwidth_bps = float(bandwidth_bps)
    if isinstance(rtt_ms, bool) or not isinstance(rtt_ms, int | float) or not (
        math.isfinite(rtt_ms) and 0 <= rtt_ms <= MAX_RTT_MS
    ):
        raise ValueError(f"rtt_ms must be in [0, {MAX_RTT_MS:.0f}] ms, got {rtt_ms!r}")
    return bandwidth_bps, float(rtt_ms)


class LinkEmulator:
    """A FIFO link of `bandwidth_bps` (None: not emulated) and `rtt_ms`, changeable at run time."""

    def __init__(
        self,
        bandwidth_bps: float | None = None,
        rtt_ms: float = 0.0,
        max_delay_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.bandwidth_bps, self.rtt_ms = check_link_settings(bandwidth_bps, rtt_ms)
        if not max_delay_s > 0:
            raise ValueError(f"max_delay_s must be > 0, got {max_delay_s!r}")
        self.max_delay_s = max_delay_s
        self._clock = clock
        self._sleep = sleep
        self._free_at = clock()
        self.transfers = 0
        self.bytes_sent = 0
        self.trace: Trace | None = None
        self._trace_origin = 0.0

    @property
    def enabled(self) -> bool:
        return self.bandwidth_bps is not None or self.trace is not None

    def configure(self, bandwidth_bps: float | None, rtt_ms: float = 0.0) -> None:
        """Change the link to a fixed rate (ends a trace replay); transfers already scheduled
        keep their times."""
        self.bandwidth_bps, self.rtt_ms = check_link_settings(bandwidth_bps, rtt_ms)
        self.trace = None

    def replay(self, trace: Trace, rtt_ms: float | None = None) -> None:
        """Follow `trace` from now on, looping, until `configure` sets a fixed rate."""
        if rtt_ms is not None:
            self.rtt_ms = check_link_settings(None, rtt_ms)[1]
        self.trace, self._trace_origin = trace, self._clock()

    def rate_now(self) -> float | None:
        """The link's rate at this moment (the trace's, when one is replayed)."""
        if self.trace is not None:
            return self.trace.rate_at(self._clock() - self._trace_origin)
        return self.bandwidth_bps

    def schedule(self, nbytes: int) -> Transfer:
        """Reserve the link for `nbytes` now and return the transfer's timing (no waiting).

        Raises:
            LinkSaturated: the transfer would finish later than `max_delay_s` from now.
        """
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
            raise ValueError(f"nbytes must be an integer >= 0, got {nbytes!r}")
        if not self.enabled or nbytes == 0:
            return Transfer(nbytes, 0.0, 0.0, 0.0)
        now = self._clock()
        start = max(now, self._free_at)
        if self.trace is not None:
            origin = self._trace_origin
            wire_s = self.trace.arrival(start - origin, nbytes) + origin - start
        else:
            wire_s = nbytes * 8.0 / self.bandwidth_bps
        transfer = Transfer(nbytes, start - now, wire_s, self.rtt_ms / 1000.0)
        if transfer.total_s > self.max_delay_s:
            raise LinkSaturated(
                f"the emulated link ({self.rate_now():g} bit/s now) would take "
                f"{transfer.total_s:.1f} s for {nbytes} bytes, more than {self.max_delay_s:g} s"
            )
        self._free_at = start + wire_s
        self.transfers += 1
        self.bytes_sent += nbytes
        return transfer

    async def transmit(self, nbytes: int) -> Transfer:
        """Schedule `nbytes` and wait until they have arrived."""
        transfer = self.schedule(nbytes)
        if transfer.total_s > 0:
            await self._sleep(transfer.total_s)
        return transfer

    def snapshot(self) -> dict:
        """A JSON-ready description of the link."""
        return {
            "emulated": self.enabled,
            "bandwidth_bps": self.rate_now(),
            "trace": None if self.trace is None else {
                "name": self.trace.name, "seconds": self.trace.duration_s,
                "at_s": (self._clock() - self._trace_origin) % self.trace.duration_s},
            "rtt_ms": self.rtt_ms,
            "backlog_s": max(0.0, self._free_at - self._clock()),
            "transfers": self.transfers,
            "bytes_sent": self.bytes_sent,
        }
