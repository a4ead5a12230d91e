"""Shared per-link state: two planners deciding from one board agree; `decide` is `choose`
without memory of its own."""

from serve.bandwidth import EstimatorConfig
from serve.link_board import LinkBoard


def test_board_keeps_estimates_per_link_and_choices_per_key():
    board = LinkBoard(EstimatorConfig(initial_bps=10e6))
    assert board.observe("a")["estimate_bps"] == 10e6
    assert board.observe("a", report_bps=1e6, key="a|floor=0.9")["estimate_bps"] == 1e6
    assert board.observe("b")["estimate_bps"] == 10e6
    assert board.observe("a", key="a|floor=0.9")["choice"] is None
    board.remember("a|floor=0.9", "v1", "pool1")
    assert board.observe("a", key="a|floor=0.9")["choice"] == ("v1", "pool1")
    assert board.observe("a", key="a|floor=0.8")["choice"] is None
    assert board.add_transfer("b", 100_000, 0.1, 0.0, exact=True)
    assert board.snapshot("b")["samples"] == 1
