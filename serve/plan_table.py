"""A compact plan table: the best (variant, split) over every bandwidth, as intervals.

A device that caches the table for its constraint picks its (variant, split) locally for the
bandwidth it measures, and asks the edge again only when the constraint or the edge changes:
planning leaves the per-request path. The best choice is evaluated on a log grid and each change
between two grid points is located by bisection (to 1e-12 in log-bandwidth); a choice that
appears and disappears again between two grid points without showing at any midpoint of the
bisection can be missed (the grid has 12 points per decade).
Hysteresis is the device's: it switches only once its estimate is past a boundary by
`switch_margin` (the same margin the Router applies).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from pipeline.cost import Link
from serve.bandwidth import SWITCH_MARGIN

if TYPE_CHECKING:  # `pick` runs on devices without torch, which pipeline.selection imports
    from pipeline.selection import Candidate

LOW_BPS, HIGH_BPS = 1e3, 1e10
GRID_POINTS = 97  # 12 points per decade over 7 decades, plus the ends
BISECTIONS = 40


def plan_table(best_at: Callable[[Link], Candidate], rtt_ms: float = 0.0,
               low_bps: float = LOW_BPS, high_bps: float = HIGH_BPS) -> list[dict]:
    """Intervals `[min_bps, max_bps)` of bandwidth with their best candidate.

    Args:
        best_at: the planner's best candidate for a link (raises NoFeasibleCandidate when none).
        rtt_ms: the link's round trip.

    Returns:
        Rows in increasing bandwidth; the first starts at 0 and the last ends at None (no bound).
        A bandwidth where nothing meets the constraint has a row with `variant` None.
    """
    from pipeline.selection import NoFeasibleCandidate

    def choice(bps: float) -> tuple[str, str] | None:
        try:
            c = best_at(Link(bps, rtt_ms))
        except NoFeasibleCandidate:
            return None
        found[(c.variant_id, c.split)] = c
        return c.variant_id, c.split

    found: dict[tuple[str, str], Candidate] = {}

    def changes(lo: float, hi: float, a, b, depth: int = 0) -> list:
        """Boundaries between log-bandwidths lo (choice a) and hi (choice b), every one of them:
        a midpoint with a third choice splits the search in two."""
        if a == b:
            return []
        if hi - lo < 1e-12 or depth >= BISECTIONS:
            return [(math.exp(hi), b)]
        mid = (lo + hi) / 2
        m = choice(math.exp(mid))
        return changes(lo, mid, a, m, depth + 1) + changes(mid, hi, m, b, depth + 1)

    log_low, log_high = math.log(low_bps), math.log(high_bps)
    grid = [log_low + (log_high - log_low) * i / (GRID_POINTS - 1) for i in range(GRID_POINTS)]
    picks = [choice(math.exp(g)) for g in grid]
    boundaries: list[tuple[float, tuple[str, str] | None]] = [(0.0, picks[0])]
    for i in range(GRID_POINTS - 1):
        boundaries += changes(grid[i], grid[i + 1], picks[i], picks[i + 1])
    rows = []
    for i, (start, key) in enumerate(boundaries):
        end = boundaries[i + 1][0] if i + 1 < len(boundaries) else None
        candidate = found.get(key) if key else None
        rows.append({
            "min_bps": start, "max_bps": end,
            "variant": key[0] if key else None, "split": key[1] if key else None,
            "strategy": candidate.strategy if candidate else None,
            "accuracy": candidate.accuracy if candidate else None,
            "bytes": candidate.bytes_sent if candidate else None,
        })
    return rows


def pick(table: list[dict], bandwidth_bps: float, current: tuple[str, str] | None = None,
         switch_margin: float = SWITCH_MARGIN) -> dict:
    """The row for `bandwidth_bps`; the row of `current` while the bandwidth is within
    `switch_margin` of that row's interval (hysteresis against flapping at a boundary)."""
    if not table:
        raise ValueError("empty plan table")
    if current is not None:
        for row in table:
            if (row["variant"], row["split"]) == tuple(current):
                low = row["min_bps"] * (1 - switch_margin)
                high = math.inf if row["max_bps"] is None else row["max_bps"] * (1 + switch_margin)
                if low <= bandwidth_bps < high:
                    return row
    for row in table:
        if row["max_bps"] is None or bandwidth_bps < row["max_bps"]:
            return row
    return table[-1]
