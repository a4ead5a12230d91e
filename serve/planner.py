"""The router's choice of (variant, split): `pipeline.selection` plus memory against flapping.

`Planner.plan` is the stateless selection for given conditions (the `/v1/plan` endpoint).
`Planner.choose` remembers the last choice per key (link and constraint) and keeps it while it
is still feasible and nearly as good as the new best: with an accuracy floor, while its predicted
latency is within `switch_margin` of the best one's; with a latency budget, until it breaks the
budget, and a more accurate candidate replaces it only when that one fits the budget with
`switch_margin` to spare. With the estimator's own band this keeps the choice steady while the
bandwidth jitters around a decision threshold.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from pipeline.cost import Breakdown, Link, latency_breakdown
from pipeline.device_times import DeviceTimes, parse_device_times, with_device_times
from pipeline.profiler import derive_profile
from pipeline.selection import (
    JPEG_INPUT,
    RAW_INPUT,
    Candidate,
    CandidateTable,
    Decision,
    baseline_candidates,
    candidates_from_series,
)
from pipeline.series import Manifest
from pipeline.split import split_points
from serve.bandwidth import SWITCH_MARGIN


@dataclass(frozen=True)
class Choice:
    """What to run: the candidate, its predicted breakdown, and whether it changed."""

    candidate: Candidate
    breakdown: Breakdown
    switched: bool
    kept: bool

    @property
    def split(self) -> str:
        """The split the head and tail run at (raw input is split `input`)."""
        return self.candidate.split


def constraint_key(accuracy_floor: float | None, latency_budget_ms: float | None) -> str:
    if accuracy_floor is not None:
        return f"floor={accuracy_floor:g}"
    return f"budget={latency_budget_ms:g}"


MAX_DEVICE_TABLES = 16


class Planner:
    """Candidates of a series and its profiles; `decide` keeps the choice in force near a
    boundary (hysteresis), given that choice."""

    def __init__(
        self,
        manifest: Manifest,
        device_profile: dict,
        edge_profile: dict,
        bytes_stat: str = "mean",
        baselines: bool = True,
        switch_margin: float = SWITCH_MARGIN,
    ):
        if not 0 <= switch_margin < 1:
            raise ValueError(f"switch_margin must be in [0, 1), got {switch_margin!r}")
        self._manifest, self._edge_profile, self._device_profile = manifest, edge_profile, device_profile
        self._bytes_stat, self._baselines = bytes_stat, baselines
        candidates = self._candidates(device_profile)
        self.table = CandidateTable(candidates)
        self._device_tables: OrderedDict[tuple, CandidateTable] = OrderedDict()
        self._timed_tables: OrderedDict[tuple, CandidateTable] = OrderedDict()
        self.switch_margin = switch_margin
        # Unique: a raw-input (all-on-device) baseline exists only where the variant does not
        # offer `input` (`output`) itself.
        self._by_key = {(c.variant_id, c.split): c for c in candidates}
        self._offered: dict[str, set[str]] = {}  # variant -> the splits it is served at
        for vid, split in self._by_key:
            self._offered.setdefault(vid, set()).add(split)
        self.variants = manifest.by_id()
        self.best_accuracy = max(c.accuracy for c in candidates)

    def _candidates(self, device_profile: dict) -> list[Candidate]:
        candidates = candidates_from_series(self._manifest, device_profile, self._edge_profile,
                                            self._bytes_stat)
        if self._baselines:
            candidates += baseline_candidates(self._manifest, device_profile, self._edge_profile)
        return candidates

    def table_for(self, device_slowdown: float | None, device_overhead_ms: float = 0.0,
                  frames_only: bool = False,
                  device_ms: Mapping[tuple[str, str], float] | None = None) -> CandidateTable:
        """The candidates with the configured device profile (None), or for a device that reports
        its speed: `device_slowdown` times the edge's own profile plus `device_overhead_ms` per
        call that runs anything on it (the per-call cost a warm per-layer profile misses).
        `frames_only`: a device that runs heads and sends wire frames, never the image itself
        (no raw-pixel or JPEG upload candidates). `device_ms`: the device's own measured time of
        some heads, (variant, split) -> ms (`pipeline.device_times`), used as they are in place
        of the profile's. A few such tables are cached."""
        if device_slowdown is None:
            if device_overhead_ms:
                raise ValueError("device_overhead_ms needs device_slowdown")
            if not frames_only and not device_ms:
                return self.table
        key = (None if device_slowdown is None else float(device_slowdown),
               float(device_overhead_ms), frames_only)
        if device_ms:
            # a device's own times: cached apart, so that devices with times do not push the
            # shared per-speed tables out
            timed_key = (key, frozenset(device_ms.items()))
            if timed_key not in self._timed_tables:
                plain = self.table_for(device_slowdown, device_overhead_ms, frames_only)
                self._timed_tables[timed_key] = CandidateTable(with_device_times(plain.candidates, device_ms))
                while len(self._timed_tables) > MAX_DEVICE_TABLES:
                    self._timed_tables.popitem(last=False)
            self._timed_tables.move_to_end(timed_key)
            return self._timed_tables[timed_key]
        if key not in self._device_tables:
            candidates = self._candidates(self._device_profile if key[0] is None
                                          else derive_profile(self._edge_profile, key[0]))
            if frames_only:
                candidates = [c for c in candidates if c.strategy not in (RAW_INPUT, JPEG_INPUT)]
            if key[1]:
                candidates = [dataclasses.replace(c, head_ms=c.head_ms + key[1]) if c.head_ms > 0 else c
                              for c in candidates]
            self._device_tables[key] = CandidateTable(candidates)
            while len(self._device_tables) > MAX_DEVICE_TABLES:
                self._device_tables.popitem(last=False)
        self._device_tables.move_to_end(key)
        return self._device_tables[key]

    def device_times(self, document: object) -> DeviceTimes:
        """A device's measured head times from JSON (`pipeline.device_times`), checked against
        the variants and splits served here; ValueError naming the bad entry."""
        return parse_device_times(document, self._offered)

    def splits_of(self, variant_id: str) -> list[str]:
        """Split points a variant can be served at: those it offers, plus the baselines'."""
        spec = self.variants[variant_id].arch_spec
        return [s for s in split_points(spec) if (variant_id, s) in self._by_key]

    def candidate(self, variant_id: str, split: str) -> Candidate:
        """The candidate for a forced (variant, split); ValueError naming the valid ones."""
        if variant_id not in self.variants:
            raise KeyError(variant_id)
        found = self._by_key.get((variant_id, split))
        if found is None:
            raise ValueError(
                f"variant {variant_id!r} is not served at split {split!r}; its splits are "
                f"{', '.join(self.splits_of(variant_id))}"
            )
        return found

    def plan(self, link: Link, accuracy_floor: float | None = None,
             latency_budget_ms: float | None = None, top_k: int = 5,
             device_slowdown: float | None = None, device_overhead_ms: float = 0.0,
             frames_only: bool = False,
             device_ms: Mapping[tuple[str, str], float] | None = None) -> Decision:
        """Stateless best choice (raises `NoFeasibleCandidate` when nothing fits); see
        `table_for` for `device_slowdown`, `device_overhead_ms`, `frames_only` and `device_ms`."""
        table = self.table_for(device_slowdown, device_overhead_ms, frames_only, device_ms)
        return table.select(link, accuracy_floor, latency_budget_ms, top_k)

    def decide(self, previous: Candidate | None, link: Link, accuracy_floor: float | None = None,
               latency_budget_ms: float | None = None) -> Choice:
        """The choice given the one in force (`previous`, None if none), without memory of its
        own: replicas that share `previous` (serve.link_board) decide alike."""
        decision = self.plan(link, accuracy_floor, latency_budget_ms, top_k=1)
        best, best_b = decision.best, decision.breakdown
        choice = Choice(best, best_b, switched=previous is not None and previous != best, kept=False)
        if previous is not None and previous != best:
            prev_b = latency_breakdown(previous.head_ms, previous.bytes_sent, previous.tail_ms, link)
            if self._keep(previous, prev_b, best, best_b, accuracy_floor, latency_budget_ms):
                choice = Choice(previous, prev_b, switched=False, kept=True)
        return choice

    def _keep(self, previous: Candidate, prev_b: Breakdown, best: Candidate, best_b: Breakdown,
              accuracy_floor: float | None, latency_budget_ms: float | None) -> bool:
        if accuracy_floor is not None:
            return (previous.accuracy >= accuracy_floor
                    and prev_b.total_ms <= best_b.total_ms * (1 + self.switch_margin))
        if prev_b.total_ms > latency_budget_ms:
            return False
        if best.accuracy > previous.accuracy:
            return best_b.total_ms > latency_budget_ms * (1 - self.switch_margin)
        return prev_b.total_ms <= best_b.total_ms * (1 + self.switch_margin)

