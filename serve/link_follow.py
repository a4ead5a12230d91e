"""How a Router follows a device's link: the emulated wire a frame crosses, the deadline past
which the device finishes the frame itself, and probes that learn the link while nothing is sent.

The estimate itself lives in the link board (`serve/link_board.py`), shared by every Router
replica; this is the per-replica part."""

import asyncio
import logging
from collections.abc import Callable, Sequence

from pipeline.selection import Candidate
from pipeline.traces import TraceError, parse_trace
from serve.deadline import censored_seconds, deadline_ms, fallback_candidate
from serve.inputs import HttpError
from serve.link import LinkEmulator, LinkSaturated, check_link_settings
from serve.link_board import LinkBoardClient
from serve.settings import AppArgs

logger = logging.getLogger("ray.serve")

FALLBACKS_KEPT = 64  # accuracy floors whose on-device fallback is remembered


class LinkFollower:
    """The emulated link of one Router replica, its frame deadline and its probes."""

    def __init__(self, args: AppArgs, board: LinkBoardClient, link: LinkEmulator,
                 candidates: Callable[[], Sequence[Candidate]]):
        self.args, self.board, self.link = args, board, link
        self._candidates = candidates
        self._fallbacks: dict[float | None, Candidate | None] = {}
        self._probes: dict[str, asyncio.Task] = {}
        self.deadline_hits = 0

    def rtt_ms(self) -> float:
        return self.link.rtt_ms if self.link.enabled else self.args.rtt_ms

    def state(self) -> dict:
        """What `/v1/health` shows of the link."""
        return {"link": self.link.snapshot(), "deadline_hits": self.deadline_hits,
                "probes_in_flight": sorted(self._probes)}

    def fallback(self, floor: float | None) -> Candidate | None:
        """The on-device fallback for `floor`, found once per floor (not per frame)."""
        if floor not in self._fallbacks:
            if len(self._fallbacks) >= FALLBACKS_KEPT:
                self._fallbacks.clear()
            self._fallbacks[floor] = fallback_candidate(self._candidates(), floor)
        return self._fallbacks[floor]

    async def carry(self, link_id: str, nbytes: int, floor: float | None,
                    deadline: bool = True) -> tuple[Candidate | None, float | None]:
        """Carry a frame over the emulated link and learn its time on the wire; past its deadline
        (planned requests: a forced split is kept), stop waiting and return the on-device
        fallback that finishes the request instead. Returns (that fallback or None, the deadline)."""
        transfer = self.link.schedule(nbytes)
        fallback = self.fallback(floor) if deadline else None
        limit_ms = deadline_ms(fallback, self.args.frame_deadline_ms, self.args.deadline_factor)
        if limit_ms is None or transfer.total_s * 1000.0 <= limit_ms:
            await asyncio.sleep(transfer.total_s)
            self.board.add_transfer(link_id, nbytes, transfer.wire_s + transfer.rtt_s, self.link.rtt_ms,
                                    exact=True)
            return None, limit_ms
        await asyncio.sleep(limit_ms / 1000.0)
        # slower than nbytes in that time: what the estimate must learn
        wire = censored_seconds(limit_ms / 1000.0, transfer.queue_s)
        self.board.add_transfer(link_id, nbytes, wire + transfer.rtt_s, self.link.rtt_ms, exact=True)
        self.deadline_hits += 1
        logger.info("link %s: frame of %d B past its %.0f ms deadline; finished on the device (%s)",
                    link_id, nbytes, limit_ms, fallback.label)
        return fallback, limit_ms

    def maybe_probe(self, link_id: str, age_s: float) -> None:
        """Send a probe over the emulated link when its estimate has had no sample for a while,
        so a plan that sends nothing (all on device) can still see the link get better."""
        if (not self.link.enabled or link_id in self._probes
                or age_s < self.args.probe_interval_s):
            return

        async def probe() -> None:
            try:
                transfer = await self.link.transmit(self.args.probe_bytes)
                self.board.add_transfer(link_id, self.args.probe_bytes, transfer.total_s,
                                        self.link.rtt_ms, exact=True)
            except LinkSaturated:
                pass
            finally:
                self._probes.pop(link_id, None)

        self._probes[link_id] = asyncio.get_running_loop().create_task(probe())

    def configure(self, settings: object) -> dict:
        """Apply `PUT /v1/link`'s body: a fixed rate and RTT, or a trace to replay; HttpError 400
        naming what is wrong."""
        fixed, replay = {"bandwidth_bps", "rtt_ms"}, {"trace", "trace_speed", "rtt_ms"}
        if not isinstance(settings, dict) or not (set(settings) <= fixed or set(settings) <= replay):
            raise HttpError(400, 'body must be {"bandwidth_bps": number or null, "rtt_ms": number} or '
                                 '{"trace": "time_s Mbit/s lines", "trace_speed": number, "rtt_ms": number}')
        try:
            if "trace" in settings:
                if not isinstance(settings["trace"], str):
                    raise ValueError("trace must be the text of a trace file ('time_s Mbit/s' lines)")
                trace = parse_trace(settings["trace"], "PUT /v1/link")
                trace = trace.sped_up(settings.get("trace_speed", 1.0))
                self.link.replay(trace, settings.get("rtt_ms", self.link.rtt_ms))
            else:
                self.link.configure(*check_link_settings(settings.get("bandwidth_bps"),
                                                         settings.get("rtt_ms", 0.0)))
        except (ValueError, TraceError) as err:
            raise HttpError(400, str(err)) from None
        return {"emulation": self.link.snapshot()}
