"""The plan table a device caches: exact at its boundaries, one row per choice interval, and
hysteresis when the device picks from it."""

import pytest

from pipeline.cost import Link
from pipeline.profiler import derive_profile
from serve.plan_table import pick, plan_table
from serve.planner import Planner
from serve.profiles import estimate_profile


@pytest.fixture
def planner(tiny_store):
    edge = estimate_profile(tiny_store.manifest, 20.0)
    return Planner(tiny_store.manifest, derive_profile(edge, 5.0), edge)


def test_table_rows_cover_every_bandwidth_and_agree_with_the_planner(planner):
    def best(link):
        return planner.plan(link, accuracy_floor=0.8, top_k=1).best

    rows = plan_table(best, rtt_ms=5.0)
    assert rows[0]["min_bps"] == 0.0 and rows[-1]["max_bps"] is None
    assert len(rows) >= 2  # the tiny series changes its choice somewhere between 1 kbit/s and 10 Gbit/s
    for row, following in zip(rows, rows[1:], strict=False):
        assert row["max_bps"] == following["min_bps"]
        assert (row["variant"], row["split"]) != (following["variant"], following["split"])
    for row in rows:
        lo = max(row["min_bps"], 1e3)
        hi = row["max_bps"] or 1e10
        for bps in (lo * 1.0001, (lo * hi) ** 0.5, hi * 0.9999):
            chosen = best(Link(bps, 5.0))
            assert (chosen.variant_id, chosen.split) == (row["variant"], row["split"]), bps


def test_pick_keeps_the_current_row_within_the_margin(planner):
    rows = plan_table(lambda link: planner.plan(link, accuracy_floor=0.8, top_k=1).best)
    boundary = rows[1]["min_bps"]
    below, above = rows[0], rows[1]
    assert pick(rows, boundary * 0.99) is below
    assert pick(rows, boundary * 1.01) is above
    current = (below["variant"], below["split"])
    assert pick(rows, boundary * 1.05, current, switch_margin=0.1) is below  # within 10%: kept
    assert pick(rows, boundary * 1.2, current, switch_margin=0.1) is above
    with pytest.raises(ValueError):
        pick([], 1e6)


def test_an_infeasible_constraint_gives_rows_without_a_variant(planner):
    rows = plan_table(lambda link: planner.plan(link, accuracy_floor=0.999, top_k=1).best)
    assert rows == [{"min_bps": 0.0, "max_bps": None, "variant": None, "split": None,
                     "strategy": None, "accuracy": None, "bytes": None}]
