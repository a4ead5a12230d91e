"""Bandwidth estimation for the router: a robust running estimate with hysteresis, plain Python.

Each observed transfer gives `(bytes, seconds)`. The raw estimate is the byte-weighted harmonic
mean of the throughputs of the last `window` samples (no older than `max_age_s`), which is simply
`sum(bits) / sum(seconds)`: one slow transfer pulls it down at once, one fast outlier barely lifts
it, so a drop is seen quickly and a rise only once most of the window agrees. A known round-trip
time is taken off each sample first (a frame of 60 bytes measures latency, not throughput), and
samples smaller than `min_sample_bytes` are ignored for the same reason. A rate a client reports
enters as one sample of `report_bytes` at that rate.

The estimate the router plans with is held (hysteresis): it moves to the raw estimate only when
the raw estimate leaves the band `[held / (1 + band), held * (1 + band)]`, so the (variant,
split) chosen does not flap while the link jitters around a decision threshold.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.cost import MAX_BANDWIDTH_BPS  # pipeline.cost.Link's bound: above is a unit mistake

_MIN_SECONDS = 1e-9


def _check_bandwidth(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of bits per second, got {value!r}")
    if not math.isfinite(value) or not 0 < value <= MAX_BANDWIDTH_BPS:
        raise ValueError(f"{name} must be in (0, {MAX_BANDWIDTH_BPS:.0e}] bit/s, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class EstimatorConfig:
    """Settings of a `BandwidthEstimator`.

    Attributes:
        initial_bps: the estimate before any sample arrives.
        window: how many recent samples the estimate averages.
        max_age_s: samples older than this are dropped.
        min_sample_bytes: transfers smaller than this are ignored (latency-dominated).
        band: relative hysteresis band of the held estimate (0.25 = +-25%).
        report_bytes: the weight, in bytes, of one client-reported rate.
    """

    initial_bps: float = 10e6
    window: int = 8
    max_age_s: float = 30.0
    min_sample_bytes: int = 256
    band: float = 0.25
    report_bytes: int = 4096

    def __post_init__(self):
        _check_bandwidth("initial_bps", self.initial_bps)
        for name, low in (("window", 1), ("min_sample_bytes", 0), ("report_bytes", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("max_age_s", "band"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                math.isfinite(value) and value >= 0
            ):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.max_age_s <= 0:
            raise ValueError(f"max_age_s must be > 0, got {self.max_age_s!r}")


# How a link is followed, tuned on measured HSDPA traces (bench/bench_traces.py): the router's
# defaults (serve.settings.AppArgs) and the device client's own estimate use these.
LINK_WINDOW, LINK_MAX_AGE_S, LINK_BAND = 2, 0.5, 0.1
PROBE_BYTES, PROBE_INTERVAL_S = 1024, 0.5  # 16 kbit/s while the device runs everything
SWITCH_MARGIN = 0.1  # the planners keep a choice while within 10% of the best (hysteresis)


@dataclass(frozen=True)
class Sample:
    """One observation: `nbytes` took `seconds` of pure transfer (RTT removed) at time `at`."""

    nbytes: int
    seconds: float
    at: float
    reported: bool = False


class BandwidthEstimator:
    """Running link-throughput estimate from observed transfers and client reports."""

    def __init__(self, config: EstimatorConfig = EstimatorConfig(),
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        self._clock = clock
        self._samples: deque[Sample] = deque(maxlen=config.window)
        self._held = config.initial_bps
        self._last_at: float | None = None
        self.samples_seen = 0
        self.samples_ignored = 0

    def add_transfer(self, nbytes: int, seconds: float, rtt_ms: float = 0.0, exact: bool = False) -> bool:
        """Record that `nbytes` took `seconds` end to end over a link with round trip `rtt_ms`.

        Args:
            exact: the time is exact (an emulated link's schedule), so even a small transfer
                is a good throughput sample and `min_sample_bytes` does not apply.

        Returns:
            Whether the sample was used (large enough, and longer than the round trip).
        """
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
            raise ValueError(f"nbytes must be an integer >= 0, got {nbytes!r}")
        for name, value in (("seconds", seconds), ("rtt_ms", rtt_ms)):
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        self.samples_seen += 1
        transfer_s = seconds - rtt_ms / 1000.0
        min_bytes = 1 if exact else max(self.config.min_sample_bytes, 1)
        if nbytes < min_bytes or transfer_s <= _MIN_SECONDS:
            self.samples_ignored += 1
            return False
        self._push(Sample(nbytes, transfer_s, self._clock()))
        return True

    def report(self, bandwidth_bps: float) -> None:
        """Take a rate the client measured itself as one sample of `report_bytes`."""
        bps = _check_bandwidth("reported bandwidth", bandwidth_bps)
        nbytes = self.config.report_bytes
        self.samples_seen += 1
        self._push(Sample(nbytes, nbytes * 8.0 / bps, self._clock(), reported=True))

    def _push(self, sample: Sample) -> None:
        self._samples.append(sample)
        self._last_at = sample.at
        raw = self.raw_bps
        band = 1.0 + self.config.band
        if raw > self._held * band or raw < self._held / band:
            self._held = raw

    def _fresh(self) -> list[Sample]:
        horizon = self._clock() - self.config.max_age_s
        return [s for s in self._samples if s.at >= horizon]

    @property
    def raw_bps(self) -> float:
        """Byte-weighted harmonic mean of the fresh samples (the initial value if none)."""
        fresh = self._fresh()
        if not fresh:
            return self._held
        bits = 8.0 * sum(s.nbytes for s in fresh)
        seconds = sum(s.seconds for s in fresh)
        return min(max(bits / seconds, 1.0), MAX_BANDWIDTH_BPS)

    @property
    def estimate_bps(self) -> float:
        """The held estimate the router plans with."""
        return self._held

    def age_s(self) -> float:
        """Seconds since the last used sample (infinity if none yet)."""
        return math.inf if self._last_at is None else self._clock() - self._last_at

    def snapshot(self) -> dict:
        """A JSON-ready description of the state."""
        age = self.age_s()
        return {
            "estimate_bps": self.estimate_bps,
            "raw_bps": self.raw_bps,
            "samples": len(self._fresh()),
            "samples_seen": self.samples_seen,
            "samples_ignored": self.samples_ignored,
            "age_s": None if math.isinf(age) else age,
        }


class EstimatorPool:
    """One estimator per link id, the least recently used dropped beyond `max_links`."""

    def __init__(self, config: EstimatorConfig = EstimatorConfig(), max_links: int = 1024,
                 clock: Callable[[], float] = time.monotonic):
        if max_links < 1:
            raise ValueError(f"max_links must be >= 1, got {max_links!r}")
        self.config = config
        self.max_links = max_links
        self._clock = clock
        self._links: OrderedDict[str, BandwidthEstimator] = OrderedDict()

    def get(self, link: str) -> BandwidthEstimator:
        estimator = self._links.pop(link, None)
        if estimator is None:
            estimator = BandwidthEstimator(self.config, self._clock)
        self._links[link] = estimator
        while len(self._links) > self.max_links:
            self._links.popitem(last=False)
        return estimator

    def __contains__(self, link: str) -> bool:
        return link in self._links

    def __len__(self) -> int:
        return len(self._links)
