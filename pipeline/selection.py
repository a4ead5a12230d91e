"""Choose the (variant, split point) of a model series for a link and a constraint.

Two modes, exactly one per call:
- accuracy floor: the lowest end-to-end latency among candidates with accuracy >= floor;
- latency budget: the highest accuracy among candidates with latency <= budget.
Ties go to lower latency, then fewer bytes, then variant id, split and strategy, so a decision is
deterministic. `CandidateTable` holds the candidates as numpy arrays, built once, so a router can
call `table.select(link, ...)` per request in tens of microseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.cost import Breakdown, Link, raw_input_bytes
from pipeline.models.registry import ArchSpec
from pipeline.profiler import codec_ms, validate_profile, variant_timings
from pipeline.series import Manifest, Variant

BYTE_STATS = {"mean": "bytes_mean", "p95": "bytes_p95"}  # SplitStats' fields
# Strategy labels: a split of a series model, or one of the baselines of the paper.
SPLIT, RAW_INPUT, JPEG_INPUT, ON_DEVICE = "split", "raw-input", "jpeg-input", "all-on-device"
_CLOSEST = 3


@dataclass(frozen=True)
class Candidate:
    """One way to run an inference: a variant split at a point, with its measured costs.

    Attributes:
        variant_id: the series variant.
        split: split point (`input` ... `output`).
        accuracy: test accuracy as a fraction in [0, 1].
        bytes_sent: bytes sent device -> edge per inference (0: nothing sent).
        head_ms: device time of the head.
        tail_ms: edge time of the tail.
        strategy: `split`, `raw-input`, `jpeg-input` or `all-on-device`.
    """

    variant_id: str
    split: str
    accuracy: float
    bytes_sent: float
    head_ms: float
    tail_ms: float
    strategy: str = SPLIT

    def __post_init__(self):
        if not isinstance(self.variant_id, str) or not self.variant_id:
            raise ValueError(f"variant_id must be a non-empty string, got {self.variant_id!r}")
        if not isinstance(self.split, str) or not self.split:
            raise ValueError(f"split must be a non-empty string, got {self.split!r}")
        _check_fraction(f"accuracy of {self.label}", self.accuracy)
        for name in ("bytes_sent", "head_ms", "tail_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} of {self.label} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} of {self.label} must be finite and >= 0, got {value!r}")

    @property
    def label(self) -> str:
        """`variant@split`, plus the strategy when it is not a plain split."""
        suffix = "" if self.strategy == SPLIT else f" ({self.strategy})"
        return f"{self.variant_id}@{self.split}{suffix}"


@dataclass(frozen=True)
class Decision:
    """The chosen candidate, its latency breakdown, and the top feasible candidates in order."""

    best: Candidate
    breakdown: Breakdown
    ranked: list[tuple[Candidate, Breakdown]] = field(default_factory=list)


def ranked_rows(ranked: Sequence[tuple[Candidate, Breakdown]]) -> list[dict]:
    """(candidate, breakdown) pairs in order as JSON rows, ranked from 1 (the plan API's and
    `twostep plan`'s table)."""
    return [{
        "rank": rank, "variant": candidate.variant_id, "split": candidate.split,
        "strategy": candidate.strategy, "accuracy": candidate.accuracy,
        "bytes": candidate.bytes_sent, "device_ms": breakdown.device_ms,
        "transfer_ms": breakdown.transfer_ms, "edge_ms": breakdown.edge_ms,
        "total_ms": breakdown.total_ms,
    } for rank, (candidate, breakdown) in enumerate(ranked, start=1)]


class NoFeasibleCandidate(ValueError):
    """No candidate meets the constraint; `closest` holds the nearest (Candidate, Breakdown)."""

    def __init__(self, message: str, closest: list[tuple[Candidate, Breakdown]]):
        super().__init__(message)
        self.closest = closest


def _check_fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1] (0.9 means 90%), got {value!r}")
    return float(value)


def _check_constraint(accuracy_floor: object, latency_budget_ms: object, top_k: object) -> None:
    if (accuracy_floor is None) == (latency_budget_ms is None):
        raise ValueError("give exactly one of accuracy_floor and latency_budget_ms")
    if accuracy_floor is not None:
        _check_fraction("accuracy floor", accuracy_floor)
    if latency_budget_ms is not None:
        value = latency_budget_ms
        if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
            raise ValueError(f"latency budget must be a number of ms, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"latency budget must be a finite number of ms >= 0, got {value!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")


class CandidateTable:
    """Candidates as column arrays, so selection is a few vectorised numpy operations."""

    def __init__(self, candidates: Sequence[Candidate]):
        candidates = list(candidates)
        if not candidates:
            raise ValueError("no candidates to select from (empty series or no splits offered)")
        keys = [(c.variant_id, c.split, c.strategy) for c in candidates]
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise ValueError(f"duplicate candidate {dup[0]}@{dup[1]} ({dup[2]})")
        self.candidates = candidates
        self.accuracy = np.array([c.accuracy for c in candidates], dtype=np.float64)
        self.bytes_sent = np.array([c.bytes_sent for c in candidates], dtype=np.float64)
        self.head_ms = np.array([c.head_ms for c in candidates], dtype=np.float64)
        self.tail_ms = np.array([c.tail_ms for c in candidates], dtype=np.float64)
        self.compute_ms = self.head_ms + self.tail_ms
        self.sends = self.bytes_sent > 0
        self.neg_accuracy = -self.accuracy
        # Rank by (bytes, id, split, strategy): the tie-breakers after latency and accuracy.
        order = sorted(range(len(keys)), key=lambda i: (candidates[i].bytes_sent, keys[i]))
        self.tie_rank = np.empty(len(keys), dtype=np.int64)
        self.tie_rank[order] = np.arange(len(keys))

    @classmethod
    def from_candidates(cls, candidates: Sequence[Candidate]) -> CandidateTable:
        return cls(candidates)

    def __len__(self) -> int:
        return len(self.candidates)

    def transfer_ms(self, link: Link) -> np.ndarray:
        """Transfer time of every candidate over `link` (0 where nothing is sent)."""
        transfer = self.bytes_sent * (8000.0 / link.bandwidth_bps)
        transfer[self.sends] += link.rtt_ms
        return transfer

    def _order(self, keys: tuple[np.ndarray, ...], rows: np.ndarray | None = None) -> np.ndarray:
        """Positions of `rows` (default all) sorted by `keys`, then bytes, then id/split."""
        columns = (*keys, self.tie_rank)
        if rows is not None:
            columns = tuple(column[rows] for column in columns)
        # np.lexsort sorts by its last key first.
        return np.lexsort(columns[::-1])

    def _pair(self, i: int, transfer: np.ndarray, total: np.ndarray) -> tuple[Candidate, Breakdown]:
        breakdown = Breakdown(
            float(self.head_ms[i]), float(transfer[i]), float(self.tail_ms[i]), float(total[i])
        )
        return self.candidates[i], breakdown

    def select(
        self,
        link: Link,
        accuracy_floor: float | None = None,
        latency_budget_ms: float | None = None,
        top_k: int = 5,
    ) -> Decision:
        """The best candidate over `link` under the constraint (see the module docstring).

        Raises:
            NoFeasibleCandidate: nothing meets it; `.closest` has the nearest candidates (highest
                accuracy for a floor, lowest latency for a budget).
            ValueError: a bad link, constraint or top_k.
        """
        if not isinstance(link, Link):
            raise ValueError(f"link must be a Link, got {type(link).__name__}")
        _check_constraint(accuracy_floor, latency_budget_ms, top_k)
        transfer = self.transfer_ms(link)
        total = self.compute_ms + transfer
        by_latency = (total, self.neg_accuracy)
        by_accuracy = (self.neg_accuracy, total)
        if accuracy_floor is not None:
            feasible = np.flatnonzero(self.accuracy >= accuracy_floor)
            primary, fallback = by_latency, by_accuracy
        else:
            feasible = np.flatnonzero(total <= latency_budget_ms)
            primary, fallback = by_accuracy, by_latency
        if feasible.size == 0:
            closest = [self._pair(i, transfer, total) for i in self._order(fallback)[:_CLOSEST]]
            described = "; ".join(
                f"{c.label}: accuracy {c.accuracy:.4f}, {b.total_ms:.2f} ms" for c, b in closest
            )
            miss = (
                f"no candidate reaches accuracy >= {accuracy_floor:g}"
                if accuracy_floor is not None
                else f"no candidate finishes within {latency_budget_ms:g} ms"
            )
            message = f"{miss} at {_link_text(link)}; closest: {described}"
            raise NoFeasibleCandidate(message, closest)
        ranked_idx = feasible[self._order(primary, feasible)[:top_k]]
        ranked = [self._pair(i, transfer, total) for i in ranked_idx]
        return Decision(ranked[0][0], ranked[0][1], ranked)


def _link_text(link: Link) -> str:
    return f"{link.bandwidth_bps:g} bit/s, RTT {link.rtt_ms:g} ms"


def select(
    candidates: Sequence[Candidate] | CandidateTable,
    link: Link,
    accuracy_floor: float | None = None,
    latency_budget_ms: float | None = None,
    top_k: int = 5,
) -> Decision:
    """Choose a candidate over `link`: give exactly one of `accuracy_floor` (a fraction in [0, 1])
    and `latency_budget_ms`. See `CandidateTable.select`; build the table once when selecting
    repeatedly."""
    table = candidates if isinstance(candidates, CandidateTable) else CandidateTable(candidates)
    return table.select(link, accuracy_floor, latency_budget_ms, top_k)


def _variants(manifest: Manifest) -> list[Variant]:
    if not manifest.variants:
        raise ValueError("series manifest has no variants")
    return manifest.variants


def _check_same_spec(variant: Variant, profile: dict, which: str) -> None:
    """Refuse a stale profile: one measured on other widths than the variant has now."""
    measured = variant_timings(profile, variant.id).get("spec")
    if measured is None:
        return
    if ArchSpec.from_dict(measured) != variant.arch_spec:
        raise ValueError(
            f"the {which} profile of variant {variant.id!r} was measured on another "
            "architecture than the manifest's (a stale profile?): profile it again"
        )


def _profile_time(profile: dict, vid: str, key: str, split: str, which: str) -> float:
    timings = variant_timings(profile, vid)
    if split not in timings[key]:
        raise ValueError(f"{which} profile of variant {vid!r} has no split {split!r}")
    return float(timings[key][split])


def candidates_from_series(
    manifest: Manifest,
    device_profile: dict,
    edge_profile: dict,
    bytes_stat: str = "mean",
) -> list[Candidate]:
    """One candidate per (variant, offered split) of a series manifest.

    Args:
        manifest: the series manifest.
        device_profile: profile giving each variant's `head_ms`.
        edge_profile: profile giving each variant's `tail_ms`.
        bytes_stat: `mean` (bytes_mean) or `p95` (bytes_p95) of the measured bytes sent.

    Split `output` sends nothing, so its bytes are 0 whatever the manifest says. Where the
    profiles have a `codec` entry, every split that sends a frame also pays the device's encode
    time (head) and the edge's decode time (tail) for the map's element count.
    """
    if bytes_stat not in BYTE_STATS:
        raise ValueError(f"bytes_stat must be one of {', '.join(BYTE_STATS)}, got {bytes_stat!r}")
    validate_profile(device_profile)
    validate_profile(edge_profile)
    key = BYTE_STATS[bytes_stat]
    candidates = []
    for variant in _variants(manifest):
        vid, accuracy = variant.id, variant.accuracy
        _check_same_spec(variant, device_profile, "device")
        _check_same_spec(variant, edge_profile, "edge")
        for split, stats in variant.splits.items():
            bytes_sent = 0.0 if split == "output" else getattr(stats, key)
            head_ms = _profile_time(device_profile, vid, "head_ms", split, "device")
            tail_ms = _profile_time(edge_profile, vid, "tail_ms", split, "edge")
            if split != "output" and stats.elements is not None:
                # The device encodes the frame it sends; the edge decodes it.
                head_ms += codec_ms(device_profile, "encode_ms", stats.elements)
                tail_ms += codec_ms(edge_profile, "decode_ms", stats.elements)
            candidates.append(Candidate(vid, split, accuracy, bytes_sent, head_ms, tail_ms))
    return candidates


def baseline_candidates(
    manifest: Manifest,
    device_profile: dict,
    edge_profile: dict,
    jpeg_input_bytes: float | None = None,
) -> list[Candidate]:
    """The paper's baselines for every variant: send the raw 8-bit input, run all on the device,
    and (when its measured mean size is given) send the input as JPEG.

    A variant whose manifest already offers `input` (`output`) gets no raw-input (all-on-device)
    baseline: its own entry stands for it.
    JPEG candidates carry the variant's accuracy on uncompressed inputs, an optimistic figure.
    """
    validate_profile(device_profile)
    validate_profile(edge_profile)
    candidates = []
    for variant in _variants(manifest):
        vid, accuracy = variant.id, variant.accuracy
        raw = raw_input_bytes(variant.arch_spec)
        edge_all = _profile_time(edge_profile, vid, "tail_ms", "input", "edge")
        options = [] if "input" in variant.splits else [(RAW_INPUT, "input", raw)]
        if jpeg_input_bytes is not None:
            options.append((JPEG_INPUT, "input", jpeg_input_bytes))
        for strategy, split, bytes_sent in options:
            candidates.append(Candidate(vid, split, accuracy, bytes_sent, 0.0, edge_all, strategy))
        if "output" not in variant.splits:
            device_all = _profile_time(device_profile, vid, "head_ms", "output", "device")
            candidates.append(Candidate(vid, "output", accuracy, 0.0, device_all, 0.0, ON_DEVICE))
    return candidates
