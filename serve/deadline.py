"""The frame deadline: when a frame has not crossed the link in time, the device finishes it.

A frame on a stalled link would otherwise wait for as long as the stall lasts. The router gives
it up after `frame_deadline_ms` (default: `deadline_factor` x the on-device time of the fallback)
and runs the fallback, the fastest all-on-device candidate that meets the request's accuracy
floor, so no request waits longer than its deadline plus one on-device inference. The frame's
bytes stay on the link (a sent TCP segment cannot be taken back), and the link is known to be
slower than the frame's size over the time it had on the wire: a sample the estimator learns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the device client uses this module on devices without torch
    from pipeline.selection import Candidate


def fallback_candidate(candidates: Sequence[Candidate], floor: float | None) -> Candidate | None:
    """The fastest all-on-device candidate that meets `floor` (the most accurate one when none
    does or no floor is given); None when the series offers none."""
    local = [c for c in candidates if c.bytes_sent == 0]
    if not local:
        return None
    meeting = [c for c in local if floor is not None and c.accuracy >= floor]
    if meeting:
        return min(meeting, key=lambda c: (c.head_ms, -c.accuracy))
    return max(local, key=lambda c: (c.accuracy, -c.head_ms))


def deadline_ms(fallback: Candidate | None, fixed_ms: float | None, factor: float) -> float | None:
    """The deadline of a frame: `fixed_ms` when set, else `factor` x the fallback's on-device
    time; None (no deadline) without a fallback or with factor 0."""
    if fallback is None:
        return None
    if fixed_ms is not None:
        return fixed_ms
    return factor * fallback.head_ms if factor > 0 else None


def censored_seconds(deadline_s: float, queued_s: float) -> float:
    """What a given-up frame says of the link, as a transfer time for its bytes: it had
    `deadline_s - queued_s` on the wire without arriving. A frame that never left the queue (the
    link is still busy with those ahead of it) says at least that its bytes did not arrive within
    the deadline: without that sample, a router whose estimate is stale would keep sending
    frames into a stalled queue, none of them arriving and none teaching it anything."""
    on_wire = deadline_s - queued_s
    return on_wire if on_wire > 0.5 * deadline_s else deadline_s
