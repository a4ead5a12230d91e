"""Milliseconds since a `time.perf_counter_ns()` reading: how every stage's time is taken."""

import time


def ms_since(start_ns: int) -> float:
    return (time.perf_counter_ns() - start_ns) / 1e6
