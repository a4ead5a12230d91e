"""Measured link traces: what a real link's rate did, second by second, to replay it.

Two formats are read (`load_trace`):
- `time_s Mbit/s`, one step per line (whitespace or tab separated; `#` comments): the rate holds
  from its time to the next line's; the last step lasts as long as the median step;
- mahimahi's packet-delivery traces: one integer per line, a millisecond at which one 1500-byte
  packet can be delivered (lines may repeat); converted on the fly into steps of `bin_s`.

A `Trace` answers what a replay needs: the rate at a time, and when `n` bytes that start at `t`
have arrived (the rate integrated over the steps, so a transfer that starts in a dip speeds up
when the link comes back, as it does on a real link). Rates below `min_bps` count as `min_bps`
(a stall in a tunnel is a very slow link, never an infinite wait). A replay loops the trace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.cost import MAX_BANDWIDTH_BPS  # anything above is a unit mistake

MAHIMAHI_PACKET_BYTES = 1500
DEFAULT_MIN_BPS = 1_000.0
MAX_STEPS = 1_000_000  # a week of 1-second steps
MAX_SPEED = 1e4


class TraceError(ValueError):
    """A trace file that cannot be read as a link trace; the message names the file and line."""


@dataclass(frozen=True)
class Trace:
    """A link's rate over time: `rates_bps[i]` from `starts_s[i]` to `starts_s[i + 1]` (the last
    to `duration_s`), replayed `speed` times faster, looping."""

    name: str
    starts_s: np.ndarray
    rates_bps: np.ndarray
    duration_s: float
    min_bps: float = DEFAULT_MIN_BPS

    def __post_init__(self):
        starts, rates = np.asarray(self.starts_s, float), np.asarray(self.rates_bps, float)
        if starts.ndim != 1 or starts.shape != rates.shape or len(starts) == 0:
            raise TraceError(f"{self.name}: starts and rates must be two equal, non-empty 1-d arrays")
        if len(starts) > MAX_STEPS:
            raise TraceError(f"{self.name}: {len(starts)} steps, more than {MAX_STEPS:,}")
        if starts[0] != 0 or np.any(np.diff(starts) <= 0) or not self.duration_s > starts[-1]:
            raise TraceError(f"{self.name}: step times must start at 0 and increase")
        if not math.isfinite(self.duration_s):
            raise TraceError(f"{self.name}: the trace must last a finite time")
        if not np.all(np.isfinite(rates)) or np.any(rates < 0) or np.any(rates > MAX_BANDWIDTH_BPS):
            raise TraceError(f"{self.name}: rates must be finite, >= 0 and "
                             f"<= {MAX_BANDWIDTH_BPS / 1e6:g} Mbit/s")
        if not self.min_bps > 0:
            raise TraceError(f"min_bps must be > 0, got {self.min_bps!r}")
        object.__setattr__(self, "starts_s", starts)
        object.__setattr__(self, "rates_bps", np.maximum(rates, self.min_bps))
        ends = np.append(starts[1:], self.duration_s)
        # bits delivered from time 0 to the start of each step (and to the end, last)
        delivered = np.cumsum(self.rates_bps * (ends - starts))
        object.__setattr__(self, "_bits", np.concatenate(([0.0], delivered)))

    @property
    def mean_bps(self) -> float:
        return float(self._bits[-1] / self.duration_s)

    def sped_up(self, speed: float) -> Trace:
        """The same trace played `speed` times faster (steps shorter, rates unchanged)."""
        if isinstance(speed, bool) or not (isinstance(speed, int | float) and math.isfinite(speed)
                                           and 1 / MAX_SPEED <= speed <= MAX_SPEED):
            raise TraceError(f"trace speed must be a number in [{1 / MAX_SPEED:g}, {MAX_SPEED:g}], "
                             f"got {speed!r}")
        return Trace(self.name, self.starts_s / speed, self.rates_bps, self.duration_s / speed, self.min_bps)

    def rate_at(self, t: float) -> float:
        """The link's rate (bit/s) at `t` seconds from the start of the replay."""
        index = np.searchsorted(self.starts_s, t % self.duration_s, side="right") - 1
        return float(self.rates_bps[index])

    def steps(self) -> list[tuple[float, float]]:
        """(start s, rate bit/s) of every step, in order."""
        return [(float(s), float(r)) for s, r in zip(self.starts_s, self.rates_bps, strict=True)]

    def _bits_until(self, t: float) -> float:
        laps, within = divmod(t, self.duration_s)
        index = int(np.searchsorted(self.starts_s, within, side="right") - 1)
        partial = self._bits[index] + self.rates_bps[index] * (within - self.starts_s[index])
        return laps * self._bits[-1] + partial

    def bits_between(self, start_s: float, end_s: float) -> float:
        """Bits the link delivers from `start_s` to `end_s` (0 when end <= start)."""
        return max(0.0, self._bits_until(end_s) - self._bits_until(start_s)) if end_s > start_s else 0.0

    def arrival(self, start_s: float, nbytes: float) -> float:
        """When `nbytes` put on the link at `start_s` have all gone (s from the replay's start)."""
        if nbytes <= 0:
            return start_s
        target = self._bits_until(start_s) + 8.0 * nbytes
        laps, within = divmod(target, self._bits[-1])
        index = int(np.searchsorted(self._bits, within, side="right") - 1)
        index = min(index, len(self.starts_s) - 1)
        offset = (within - self._bits[index]) / self.rates_bps[index]
        return max(start_s, laps * self.duration_s + self.starts_s[index] + offset)


def parse_trace(text: str, name: str = "trace", bin_s: float = 1.0,
                min_bps: float = DEFAULT_MIN_BPS) -> Trace:
    """A trace from the text of a file in either format (see the module docstring)."""
    rows: list[list[float]] = []
    if len(text) > MAX_STEPS * 40:
        raise TraceError(f"{name}: {len(text):,} characters, more than a trace of {MAX_STEPS:,} steps")
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) > 2:
            raise TraceError(f"{name}:{number}: expected 'time_s Mbit/s' or one mahimahi "
                             f"millisecond, got {line.strip()[:60]!r}")
        try:
            values = [float(f) for f in fields]
        except ValueError:
            raise TraceError(f"{name}:{number}: not a number: {line.strip()[:60]!r}") from None
        if not all(math.isfinite(v) and v >= 0 for v in values):
            raise TraceError(f"{name}:{number}: values must be finite and >= 0, got {line.strip()[:60]!r}")
        if rows and len(values) != len(rows[0]):
            raise TraceError(f"{name}:{number}: {len(values)} column(s) where earlier lines have "
                             f"{len(rows[0])}")
        rows.append(values)
    if not rows:
        raise TraceError(f"{name}: no steps in the trace")
    if len(rows[0]) == 1:
        return _from_mahimahi(np.array([r[0] for r in rows]), name, bin_s, min_bps)
    table = np.array(rows)
    times = table[:, 0] - table[0, 0]
    if np.any(np.diff(times) <= 0):
        bad = int(np.argmax(np.diff(times) <= 0)) + 2
        raise TraceError(f"{name}: step times must increase (line {bad} of the steps does not)")
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    return Trace(name, times, table[:, 1] * 1e6, float(times[-1]) + step, min_bps)


def _from_mahimahi(ms: np.ndarray, name: str, bin_s: float, min_bps: float) -> Trace:
    if np.any(np.diff(ms) < 0):
        raise TraceError(f"{name}: mahimahi delivery times must not decrease")
    if not bin_s > 0:
        raise TraceError(f"bin_s must be > 0, got {bin_s!r}")
    duration = max(float(ms[-1]) / 1000.0, bin_s)
    bins = max(1, math.ceil(duration / bin_s))
    if bins > MAX_STEPS:
        raise TraceError(f"{name}: {duration:g} s in {bin_s:g}-second bins is more than {MAX_STEPS:,} steps")
    counts = np.bincount(np.minimum((ms / 1000.0 / bin_s).astype(int), bins - 1), minlength=bins)
    rates = counts * MAHIMAHI_PACKET_BYTES * 8.0 / bin_s
    return Trace(name, np.arange(bins) * bin_s, rates, bins * bin_s, min_bps)


def load_trace(path: str | Path, bin_s: float = 1.0, min_bps: float = DEFAULT_MIN_BPS) -> Trace:
    """Read a trace file (either format); TraceError names the file and the bad line."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise TraceError(f"cannot read trace {path}: {err}") from None
    return parse_trace(text, path.name, bin_s, min_bps)
