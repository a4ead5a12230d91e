"""Pruning schedules: filters removed per step-1 iteration, and the step-2 width ladder."""

from __future__ import annotations

import math


def step1_filters_per_iteration(total_filters: int, divisor: int = 16) -> int:
    """ceil(N / divisor) filters per iteration (the reference removes N/16 for VGG-16)."""
    if divisor < 1:
        raise ValueError(f"step-1 divisor must be >= 1, got {divisor}")
    return max(1, math.ceil(total_filters / divisor))


def step2_widths(width: int, steps: int = 16, min_width: int = 1, round_to: int = 1) -> list[int]:
    """Log-spaced widths from just below `width` down to `min_width`, strictly decreasing.

    Example: step2_widths(64, 6) == [32, 16, 8, 4, 2, 1]. Fewer widths come back when the layer
    is too narrow for `steps` distinct values. With `round_to` > 1 every width above `round_to`
    is rounded to the nearest multiple of it (duplicates dropped); below it the ladder goes on
    as it is, down to `min_width`: the narrowest cuts are the ones that shrink the frame most.
    """
    if steps < 1:
        raise ValueError(f"step-2 steps must be >= 1, got {steps}")
    if not 1 <= min_width:
        raise ValueError(f"min_width must be >= 1, got {min_width}")
    if round_to < 1:
        raise ValueError(f"round_to must be >= 1, got {round_to}")
    if width <= min_width:
        return []
    ratio = (min_width / width) ** (1.0 / steps)
    ladder = []
    for k in range(1, steps + 1):
        w = max(min_width, min(width - 1, round(width * ratio**k)))
        if w > round_to:
            w = min(round_to * round(w / round_to), round_to * ((width - 1) // round_to))
        if not ladder or w < ladder[-1]:
            ladder.append(w)
    if ladder[-1] != min_width:
        ladder.append(min_width)
    return ladder
