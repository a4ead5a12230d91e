"""`LinkBoard`: the per-link state every Router replica shares (one small Ray actor per app).

Plans depend on two pieces of per-link state: the bandwidth estimate (client reports and
measured transfers) and, for hysteresis, the choice currently in force for a (link,
constraint) key. Kept in one replica's memory, two Router replicas would plan differently for
the same link; kept here, they plan alike, and a Router replica can die without losing them.
Each planned request costs one actor call (`observe`); updates are sent without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict

from serve.bandwidth import EstimatorConfig, EstimatorPool
from serve.series_source import NAMESPACE

# Past this, a Router plans from its own copy of the state rather than wait for the board (a
# call takes about a millisecond; this only guards against a board that is gone or cut off).
CALL_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 120.0
logger = logging.getLogger("ray.serve")
MAX_KEYS = 4096
SESSION_REPORT_TTL_S = 5.0
HELD_REPORT_TTL_S = 10.0  # an EdgeTail replica reports the variants it serves every few seconds


def link_board_name(app_name: str) -> str:
    return f"twostep-links-{app_name}"


class LinkBoard:
    """Bandwidth estimators per link id and the current choice per planning key."""

    def __init__(self, config: EstimatorConfig):
        self.estimators = EstimatorPool(config)
        self.choices: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self.session_counts: dict[str, tuple[int, float]] = {}
        self.held: dict[str, tuple[list[str], float]] = {}

    def observe(self, link_id: str, report_bps: float | None = None, key: str | None = None) -> dict:
        """Take the client's uplink report (if any); the link's estimate, the age of its last
        sample and the choice in force for `key`."""
        estimator = self.estimators.get(link_id)
        if report_bps is not None:
            estimator.report(report_bps)
        return {"estimate_bps": estimator.estimate_bps, "age_s": estimator.age_s(),
                "choice": self.choices.get(key) if key is not None else None}

    def add_transfer(self, link_id: str, nbytes: int, seconds: float, rtt_ms: float,
                     exact: bool = False) -> bool:
        return self.estimators.get(link_id).add_transfer(nbytes, seconds, rtt_ms, exact=exact)

    def remember(self, key: str, variant_id: str, split: str) -> None:
        self.choices.pop(key, None)
        self.choices[key] = (variant_id, split)
        while len(self.choices) > MAX_KEYS:
            self.choices.popitem(last=False)

    def snapshot(self, link_id: str) -> dict:
        return self.estimators.get(link_id).snapshot()

    def count_sessions(self, replica: str, sessions: int) -> dict:
        """Take an EdgeTail replica's session count; the live replicas (reported within
        SESSION_REPORT_TTL_S) and their sessions in all, for rebalancing after a scale-up."""
        now = time.monotonic()
        self.session_counts[replica] = (sessions, now)
        live = {r: n for r, (n, at) in self.session_counts.items() if now - at <= SESSION_REPORT_TTL_S}
        self.session_counts = {r: self.session_counts[r] for r in live}
        return {"replicas": len(live), "sessions": sum(live.values())}

    def hold_variants(self, replica: str, variants: list[str]) -> list[str]:
        """Take the variants an EdgeTail replica serves; every variant the live replicas serve,
        those served by most replicas first (what a new replica loads to share the traffic)."""
        now = time.monotonic()
        self.held[replica] = (list(variants), now)
        self.held = {r: entry for r, entry in self.held.items() if now - entry[1] <= HELD_REPORT_TTL_S}
        counts = Counter(v for held, _ in self.held.values() for v in held)
        return [variant for variant, _ in counts.most_common()]


class LinkBoardClient:
    """A Router replica's handle on its app's `LinkBoard` (created by the first replica).

    Should the board be unreachable (it restarts after a crash, with fresh state), the replica
    plans from its own `LinkBoard` until the shared one answers again, and logs it once.
    """

    def __init__(self, app_name: str, config: EstimatorConfig, wait_ready: bool = True):
        import ray

        self._local = LinkBoard(config)
        self._failed = False
        self.name = link_board_name(app_name)
        self._actor = ray.remote(LinkBoard).options(
            name=self.name, namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
            num_cpus=0, max_restarts=-1, max_task_retries=0,
        ).remote(config)
        if wait_ready:  # a board still starting would time every first call out
            ray.get(self._actor.snapshot.remote("default"), timeout=READY_TIMEOUT_S)

    async def _call(self, method: str, *args):
        try:
            result = await asyncio.wait_for(getattr(self._actor, method).remote(*args), CALL_TIMEOUT_S)
        except Exception as err:  # noqa: BLE001 - any failure falls back to local state
            if not self._failed:
                logger.warning("link board %s unreachable (%s); planning from local state",
                               self.name, type(err).__name__)
            self._failed = True
            return getattr(self._local, method)(*args)
        self._failed = False
        return result

    async def observe(self, link_id: str, report_bps: float | None = None, key: str | None = None) -> dict:
        return await self._call("observe", link_id, report_bps, key)

    async def snapshot(self, link_id: str) -> dict:
        return await self._call("snapshot", link_id)

    async def count_sessions(self, replica: str, sessions: int) -> dict:
        return await self._call("count_sessions", replica, sessions)

    async def hold_variants(self, replica: str, variants: list[str]) -> list[str]:
        return await self._call("hold_variants", replica, variants)

    def report(self, link_id: str, report_bps: float) -> None:
        self._send("observe", link_id, report_bps)

    def add_transfer(self, link_id: str, nbytes: int, seconds: float, rtt_ms: float,
                     exact: bool = False) -> None:
        self._send("add_transfer", link_id, nbytes, seconds, rtt_ms, exact)

    def remember(self, key: str, variant_id: str, split: str) -> None:
        self._send("remember", key, variant_id, split)

    def _send(self, method: str, *args) -> None:
        """Fire and forget (the local state is updated too, for the fallback)."""
        getattr(self._local, method)(*args)
        try:
            getattr(self._actor, method).remote(*args)
        except Exception:  # noqa: BLE001
            self._failed = True


def kill_link_board(app_name: str) -> None:
    """Remove the app's board (when the app is deleted)."""
    import ray

    try:
        ray.kill(ray.get_actor(link_board_name(app_name), namespace=NAMESPACE), no_restart=True)
    except ValueError:
        pass
