"""Shared per-link state: two planners deciding from one board agree; `decide` is `choose`
without memory of its own."""

from pipeline.cost import Link
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


def test_decide_with_the_shared_previous_choice_equals_choose(tiny_store):
    from serve.planner import Planner
    from serve.profiles import estimate_profile

    edge = estimate_profile(tiny_store.manifest, 20.0)
    from pipeline.profiler import derive_profile

    first, second = (Planner(tiny_store.manifest, derive_profile(edge, 5.0), edge) for _ in range(2))
    remembered = None
    for bandwidth in (1e4, 2e4, 1e5, 1e6, 1e7, 1e6, 5e5, 1e4):
        link = Link(bandwidth)
        chosen = first.choose("k", link, accuracy_floor=0.8)
        decided = second.decide(remembered, link, accuracy_floor=0.8)
        assert (chosen.candidate, chosen.kept, chosen.switched) == \
            (decided.candidate, decided.kept, decided.switched)
        remembered = decided.candidate
