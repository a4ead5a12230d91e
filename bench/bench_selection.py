"""Time of one selection over 300 random candidates (median over many calls).

Run: `python bench/bench_selection.py [--candidates 300] [--calls 5000]`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from pipeline.cost import Link
from pipeline.selection import Candidate, CandidateTable, select


def random_candidates(n: int, seed: int = 0) -> list[Candidate]:
    """`n` candidates: 10 splits per variant, accuracies 0.7-0.95, up to 100 kB sent."""
    rng = random.Random(seed)
    return [
        Candidate(f"vgg16-s{i % 10}-i{i // 10}", f"conv{i % 10}", rng.uniform(0.7, 0.95),
                  rng.uniform(0, 1e5), rng.uniform(0, 50), rng.uniform(0, 10))
        for i in range(n)
    ]


def _median_us(fn, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=300)
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    candidates = random_candidates(args.candidates)
    rng = random.Random(1)
    links = [Link(rng.uniform(1e5, 1e8), rng.uniform(0, 50)) for _ in range(64)]
    build_us = _median_us(lambda: CandidateTable.from_candidates(candidates), 50)
    table = CandidateTable.from_candidates(candidates)
    it = iter(range(1 << 62))
    floor_us = _median_us(
        lambda: table.select(links[next(it) % 64], accuracy_floor=0.85), args.calls
    )
    budget_us = _median_us(
        lambda: table.select(links[next(it) % 64], latency_budget_ms=200.0), args.calls
    )
    plain_us = _median_us(lambda: select(candidates, links[0], accuracy_floor=0.85), 200)
    print(f"{args.candidates} candidates, median over {args.calls} calls:")
    print(f"  table.select, accuracy floor : {floor_us:8.1f} us/call")
    print(f"  table.select, latency budget : {budget_us:8.1f} us/call")
    print(f"  CandidateTable.from_candidates: {build_us:8.1f} us (once per series)")
    print(f"  select(list, ...) incl. build : {plain_us:8.1f} us/call")


if __name__ == "__main__":
    main()
