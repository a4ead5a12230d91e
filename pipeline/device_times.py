"""A device's own measured time for the heads it may run, in place of the scaled edge profile.

A device that times its heads (the way it calls them: after the idle wait between its
requests, which makes a call dearer than a warm back-to-back profile) hands the planner those
times as JSON, `{"VARIANT": {"SPLIT": ms, ...}, ...}`: the whole on-device work of that
(variant, split), the frame's encoding included where the split sends one (split `output` is
the whole model on the device). The planner uses them where given and the scaled profile
elsewhere, so a device can time only the few heads the plan short-lists.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the device client imports this module and must not need torch
    from pipeline.selection import Candidate

# (variant id, split) -> the device's ms for that head
DeviceTimes = dict[tuple[str, str], float]

MAX_DEVICE_TIMES = 4096
MAX_DEVICE_MS = 3_600_000.0


def parse_device_times(document: object, offered: Mapping[str, Iterable[str]]) -> DeviceTimes:
    """Check `{"VARIANT": {"SPLIT": ms}}` against the variants and splits `offered`; ValueError
    naming the first bad entry (an unknown variant or split, a time that is not a number in
    [0, 1 h], too many entries)."""
    if not isinstance(document, dict):
        raise ValueError('device_ms must be an object {"VARIANT": {"SPLIT": ms}}, '
                         f"got {type(document).__name__}")
    times: DeviceTimes = {}
    for variant, splits in document.items():
        if variant not in offered:
            raise ValueError(f"device_ms names unknown variant {variant!r}")
        if not isinstance(splits, dict):
            raise ValueError(f'device_ms[{variant!r}] must be an object {{"SPLIT": ms}}, '
                             f"got {type(splits).__name__}")
        valid = set(offered[variant])
        for split, ms in splits.items():
            if split not in valid:
                raise ValueError(f"device_ms[{variant!r}] names split {split!r}, which that "
                                 f"variant is not served at; its splits are {', '.join(sorted(valid))}")
            value = _milliseconds(ms)
            if value is None:
                raise ValueError(f"device_ms[{variant!r}][{split!r}] must be a number of ms in "
                                 f"[0, {MAX_DEVICE_MS:g}], got {str(ms)[:40]!r}")
            times[(variant, split)] = value
            if len(times) > MAX_DEVICE_TIMES:
                raise ValueError(f"device_ms has more than {MAX_DEVICE_TIMES} entries")
    return times


def _milliseconds(value: object) -> float | None:
    """`value` as ms in [0, MAX_DEVICE_MS], or None (not a number, or out of range)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        ms = float(value)
    except OverflowError:  # a JSON integer beyond any float
        return None
    return ms if math.isfinite(ms) and 0 <= ms <= MAX_DEVICE_MS else None


def device_times_document(times: Mapping[tuple[str, str], float]) -> dict[str, dict[str, float]]:
    """The JSON form of `times` (the inverse of `parse_device_times`)."""
    document: dict[str, dict[str, float]] = {}
    for (variant, split), ms in times.items():
        document.setdefault(variant, {})[split] = float(ms)
    return document


def with_device_times(candidates: Iterable[Candidate],
                      times: Mapping[tuple[str, str], float]) -> list[Candidate]:
    """`candidates` with the head time of every (variant, split) in `times` replaced; candidates
    that run nothing on the device (raw or JPEG upload, head time 0) are left alone."""
    return [dataclasses.replace(c, head_ms=times[(c.variant_id, c.split)])
            if c.head_ms > 0 and (c.variant_id, c.split) in times else c
            for c in candidates]
