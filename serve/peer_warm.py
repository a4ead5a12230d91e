"""A new EdgeTail replica loads the variants its peers serve, so that it shares their traffic.

Serve routes a frame to the replicas that already hold its variant (the multiplexed model id)
and to another replica only when all of those are full. A replica the autoscaler adds holds no
variant, and with room for `max_ongoing_requests` frames plus every session on each replica the
others are rarely full: measured on the autoscaling cluster (docs/cluster.md, "Serving scales
out and back"), the new replica took no frame in 150 s of load. So every PERIOD_S each replica
reports to its app's LinkBoard the variants it served frames of in the last USE_WINDOW_S (and
still holds), and, when it is idle and its cache has room for one more besides, loads one
variant its peers serve that it lacks, the most-served first. A variant loaded this way is not
reported until frames of it arrive here, so a one-off load elsewhere does not spread, and a
warm-up load never evicts a variant of this replica's own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

logger = logging.getLogger("ray.serve")
PERIOD_S = 2.0
USE_WINDOW_S = 30.0  # a variant counts as served while a frame of it came this recently
RETRY_S = 60.0  # a variant that failed to load here is tried again after this long


class PeerWarmth:
    """What one replica serves and holds, and the loop that follows its peers."""

    def __init__(self, replica_id: str, capacity: int, board: Callable[[], object],
                 load: Callable[[str], Awaitable[object]], busy: Callable[[], bool] = lambda: False,
                 cached: Callable[[], list[str] | None] = lambda: None, period_s: float = PERIOD_S,
                 clock: Callable[[], float] = time.monotonic):
        self.replica_id, self.capacity, self.period_s = replica_id, capacity, period_s
        self._board, self._load, self._busy, self._cached, self._clock = board, load, busy, cached, clock
        self.loaded: OrderedDict[str, None] = OrderedDict()  # when Serve's cache cannot be read
        self.used: dict[str, float] = {}
        self.warmed = 0  # variants loaded because peers served them
        self.refused: dict[str, tuple[str, float]] = {}  # variant -> (why, when) it failed here
        self._task: asyncio.Task | None = None

    def note_loaded(self, variant: str) -> None:
        self.loaded.pop(variant, None)
        self.loaded[variant] = None
        while len(self.loaded) > self.capacity:
            self.loaded.popitem(last=False)

    def note_used(self, variant: str) -> None:
        """A frame of `variant` came (called on every frame: one dict store)."""
        self.used[variant] = self._clock()

    def held(self) -> list[str]:
        """The variants in this replica's model cache (Serve's own, where it can be read)."""
        cached = self._cached()
        return list(self.loaded) if cached is None else list(cached)

    def serving(self) -> list[str]:
        """Variants this replica served frames of within USE_WINDOW_S and still holds."""
        now = self._clock()
        self.used = {v: at for v, at in self.used.items() if now - at <= USE_WINDOW_S}
        held = set(self.held())
        return [v for v, _ in sorted(self.used.items(), key=lambda kv: -kv[1]) if v in held]

    def ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        failing = False
        while True:
            try:
                await self.step()
                failing = False
            except Exception:  # noqa: BLE001 - a failed round must not stop the next
                if not failing:  # once per run of failures, not every round
                    logger.exception("peer warm-up")
                failing = True
            await asyncio.sleep(self.period_s)

    async def step(self) -> str | None:
        """One round: report what this replica serves; load one variant its peers serve (when
        idle and with room to spare). Returns the variant loaded, if any."""
        peers_serve = await self._board().hold_variants(self.replica_id, self.serving())
        held = set(self.held())
        if self._busy() or len(held) >= self.capacity - 1:
            return None
        now = self._clock()
        for variant in peers_serve:
            if variant in held or now - self.refused.get(variant, ("", -RETRY_S))[1] < RETRY_S:
                continue
            try:
                await self._load(variant)  # the multiplexed loader: Serve now routes it here too
            except Exception as err:  # noqa: BLE001 - said in /v1/health, tried again later
                self.refused[variant] = (f"{type(err).__name__}: {err}"[:200], now)
                continue
            self.refused.pop(variant, None)
            self.note_loaded(variant)
            self.warmed += 1
            logger.info("loaded %s, served by peer replicas", variant)
            return variant
        return None

    def health(self) -> dict:
        return {"loaded_for_peers": self.warmed, "serving": self.serving(),
                "refused": {v: why for v, (why, _) in self.refused.items()}}
