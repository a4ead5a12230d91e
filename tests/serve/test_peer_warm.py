"""A new EdgeTail replica loads what its peers hold (`serve.peer_warm`), through the LinkBoard's
record of who holds what; it never evicts its own variants for a peer's."""

import asyncio

from serve.bandwidth import EstimatorConfig
from serve.link_board import LinkBoard
from serve.peer_warm import PeerWarmth


class _Board:
    """LinkBoardClient's async face over a real LinkBoard."""

    def __init__(self, board: LinkBoard):
        self.board = board

    async def hold_variants(self, replica, variants):
        return self.board.hold_variants(replica, variants)


def test_the_board_lists_what_live_replicas_hold_most_held_first():
    board = LinkBoard(EstimatorConfig())
    board.hold_variants("r1", ["a", "b"])
    assert board.hold_variants("r2", ["b", "c"]) == ["b", "a", "c"]
    assert board.hold_variants("r2", []) == ["a", "b"]  # r2 let c go


def _replica(name, board, capacity=3, loads=None):
    loads = [] if loads is None else loads

    async def load(variant):
        loads.append(variant)

    return PeerWarmth(name, capacity, lambda: board, load), loads


def test_a_new_replica_loads_its_peers_variants_up_to_its_capacity():
    board = _Board(LinkBoard(EstimatorConfig()))
    old, _ = _replica("old", board, capacity=4)
    for variant in ["v1", "v2", "v3", "v4"]:
        old.note_loaded(variant)
    new, loads = _replica("new", board, capacity=3)
    new.note_loaded("own")

    async def rounds():
        await old.step()
        first = await new.step()
        again = await new.step()
        return first, again

    first, again = asyncio.run(rounds())
    assert first == ["v1", "v2"] and loads == ["v1", "v2"]  # full at 3 with its own
    assert again == [] and list(new.loaded) == ["own", "v1", "v2"]
    assert new.warmed == 2


def test_a_variant_that_fails_to_load_is_skipped_once_and_the_loop_goes_on():
    board = _Board(LinkBoard(EstimatorConfig()))
    board.board.hold_variants("peer", ["bad", "good"])
    tried = []

    async def load(variant):
        tried.append(variant)
        if variant == "bad":
            raise RuntimeError("no such variant")

    warmth = PeerWarmth("me", 4, lambda: board, load, period_s=0.01)

    async def run():
        warmth.ensure_running()
        await asyncio.sleep(0.1)
        warmth._task.cancel()

    asyncio.run(run())
    assert tried == ["bad", "good"]
    assert list(warmth.loaded) == ["good"] and "no such variant" in warmth.refused["bad"]
