"""A new EdgeTail replica loads what its peers serve (`serve.peer_warm`), through the LinkBoard's
record of who serves what: one variant a round, only when idle and with a cache slot to spare,
and never what a peer merely loaded once."""

import asyncio

from serve.bandwidth import EstimatorConfig
from serve.link_board import LinkBoard
from serve.peer_warm import RETRY_S, USE_WINDOW_S, PeerWarmth


class _Board:
    """LinkBoardClient's async face over a real LinkBoard."""

    def __init__(self, board: LinkBoard):
        self.board = board

    async def hold_variants(self, replica, variants):
        return self.board.hold_variants(replica, variants)


class _Replica:
    """A replica's model cache as Serve keeps it (LRU, `capacity`) and its clock."""

    def __init__(self, name, board, capacity=4, fail=()):
        self.cache, self.capacity, self.loads, self.now, self.busy = [], capacity, [], 0.0, False

        async def load(variant):
            if variant in fail:
                raise RuntimeError(f"{variant} is broken")
            self.use(variant)
            self.loads.append(variant)

        self.warmth = PeerWarmth(name, capacity, lambda: board, load, busy=lambda: self.busy,
                                 cached=lambda: list(self.cache), clock=lambda: self.now)

    def use(self, variant):
        if variant in self.cache:
            self.cache.remove(variant)
        self.cache.append(variant)
        del self.cache[:-self.capacity]

    def frame(self, variant):
        self.use(variant)
        self.warmth.note_used(variant)


def test_the_board_lists_what_live_replicas_serve_most_served_first():
    board = LinkBoard(EstimatorConfig())
    board.hold_variants("r1", ["a", "b"])
    assert board.hold_variants("r2", ["b", "c"]) == ["b", "a", "c"]
    assert board.hold_variants("r2", []) == ["a", "b"]  # r2 no longer serves c


def test_a_new_replica_loads_what_its_peers_serve_one_a_round_keeping_a_slot_free():
    board = _Board(LinkBoard(EstimatorConfig()))
    old = _Replica("old", board)
    for t, variant in enumerate(["v1", "v2", "v3", "v1"]):
        old.now = float(t)
        old.frame(variant)
    new = _Replica("new", board)
    new.frame("own")

    async def rounds(n):
        await old.warmth.step()
        return [await new.warmth.step() for _ in range(n)]

    assert asyncio.run(rounds(3)) == ["v1", "v3", None]  # most recent first; 4 slots, one kept free
    assert new.cache == ["own", "v1", "v3"] and new.warmth.warmed == 2
    # what it loaded for its peers it does not report as served until frames of it come
    assert new.warmth.serving() == ["own"]


def test_a_busy_replica_or_a_one_off_load_elsewhere_loads_nothing():
    board = _Board(LinkBoard(EstimatorConfig()))
    old, new = _Replica("old", board), _Replica("new", board)
    old.frame("v1")
    new.busy = True

    async def round_():
        await old.warmth.step()
        return await new.warmth.step()

    assert asyncio.run(round_()) is None
    new.busy = False
    old.now = new.now = USE_WINDOW_S + 1  # v1 served long ago: no longer reported
    assert asyncio.run(round_()) is None and new.loads == []


def test_a_variant_that_fails_to_load_is_tried_again_only_after_a_while():
    board = _Board(LinkBoard(EstimatorConfig()))
    board.board.hold_variants("peer", ["bad", "good"])
    new = _Replica("me", board, capacity=8, fail={"bad"})

    async def rounds():
        first = await new.warmth.step()
        board.board.hold_variants("peer", ["bad", "good"])
        second = await new.warmth.step()
        return first, second

    assert asyncio.run(rounds()) == ("good", None)
    assert "bad is broken" in new.warmth.health()["refused"]["bad"]
    new.now = RETRY_S + 1
    board.board.hold_variants("peer", ["bad"])
    assert asyncio.run(new.warmth.step()) is None and new.warmth.refused["bad"][1] == RETRY_S + 1


def test_the_loop_survives_a_failing_round():
    class Broken:
        async def hold_variants(self, replica, variants):
            raise ConnectionError("board gone")

    warmth = PeerWarmth("me", 4, lambda: Broken(), lambda v: None, period_s=0.01)

    async def run():
        warmth.ensure_running()
        await asyncio.sleep(0.05)
        alive = not warmth._task.done()
        warmth._task.cancel()
        return alive

    assert asyncio.run(run())
