"""A new EdgeTail replica loads the variants its peers hold, so that it shares their traffic.

Serve routes a frame to the replicas that already hold its variant (the multiplexed model id)
and to another replica only when all of those are full. A replica the autoscaler adds holds no
variant, and with room for `max_ongoing_requests` frames plus every session on each replica the
others are rarely full: measured on the autoscaling cluster (docs/cluster.md, "Serving scales
out and back"), the new replica took no frame in 100 s of load. So every replica reports the
variants it loaded to its app's LinkBoard every PERIOD_S and loads those its peers hold that it
lacks, most-held first, while it holds fewer than its cache's size (it never evicts a variant of
its own for a peer's). Once loaded, Serve counts it among the variant's holders.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

logger = logging.getLogger("ray.serve")
PERIOD_S = 2.0


class PeerWarmth:
    """The variants one replica loaded (in load order), and the loop that follows its peers."""

    def __init__(self, replica_id: str, capacity: int, board: Callable[[], object],
                 load: Callable[[str], Awaitable[object]], period_s: float = PERIOD_S):
        self.replica_id, self.capacity, self.period_s = replica_id, capacity, period_s
        self._board, self._load = board, load
        self.loaded: OrderedDict[str, None] = OrderedDict()
        self.warmed = 0  # variants loaded because a peer held them
        self.refused: dict[str, str] = {}  # variants that failed to load here: not tried again
        self._task: asyncio.Task | None = None

    def note_loaded(self, variant: str) -> None:
        """A variant loaded here (Serve's cache evicts the least recently used beyond capacity)."""
        self.loaded.pop(variant, None)
        self.loaded[variant] = None
        while len(self.loaded) > self.capacity:
            self.loaded.popitem(last=False)

    def ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            try:
                await self.step()
            except Exception:  # noqa: BLE001 - a failed round must not stop the next
                logger.exception("peer warm-up")
            await asyncio.sleep(self.period_s)

    async def step(self) -> list[str]:
        """One round: report what this replica holds, load what peers hold; returns the loads."""
        held_by_peers = await self._board().hold_variants(self.replica_id, list(self.loaded))
        loads = []
        for variant in held_by_peers:
            if len(self.loaded) >= self.capacity:
                break
            if variant in self.loaded or variant in self.refused:
                continue
            try:
                await self._load(variant)  # the multiplexed loader: Serve now routes it here too
            except Exception as err:  # noqa: BLE001 - not this one (the replica says why in /health)
                self.refused[variant] = f"{type(err).__name__}: {err}"
                continue
            self.note_loaded(variant)
            loads.append(variant)
        if loads:
            self.warmed += len(loads)
            logger.info("loaded %s, held by peer replicas", ", ".join(loads))
        return loads
