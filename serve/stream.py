"""Device sessions over one WebSocket (`WS /v1/tail/stream`): the edge side.

A device opens a session on an EdgeTail replica, declares its routes once (`Hello`), then sends
frames as binary messages and gets binary answers (`pipeline.session_wire`). Each session is one
long-lived ASGI task; `SessionTable` holds a replica's sessions, enforces its limits (sessions per
replica, message size, frames per second, handshake and idle timeouts, an optional bearer token)
and, from one monitor task per replica, asks sessions to reconnect (close 1012) when the replica
drains (downscale, redeploy) or holds more than its share of the deployment's sessions after a
scale-up (rebalance: HAProxy sends a new connection to the replica with the fewest). A fault in
one session closes that session with a close code and a one-line reason; nothing else.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import math
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from pipeline.session_codec import decode_values
from pipeline.session_wire import (
    CLOSE_BAD_FRAME,
    CLOSE_HANDSHAKE_TIMEOUT,
    CLOSE_IDLE,
    CLOSE_RECONNECT,
    CLOSE_TRY_LATER,
    FRAME_HEADER_BYTES,
    KIND_ERROR,
    KIND_LOGITS,
    PROTOCOL,
    VERSION,
    Answer,
    BadHello,
    EdgeFault,
    FrameError,
    Hello,
    MessageTooBig,
    Route,
    SeriesMismatch,
    SessionError,
    TooManyMessages,
    Unauthorized,
    Unsupported,
    close_reason,
    pack_answer,
    pack_class_answer,
    parse_control,
    parse_hello,
    parse_route_decls,
    parse_session_frame,
)

logger = logging.getLogger("ray.serve")
MAX_VARIANTS_PER_SESSION = 16  # as many models as a replica's multiplexing cache holds
STATS_PERIOD_S = 2.0  # how often a busy session hears the edge's tail time per route
CLOSE_REPLY_TIMEOUT_S = 2.0  # how long a closing session waits for the device's close frame


class SessionTimeout(SessionError):
    """No message came within the handshake or idle timeout."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.close_code = code


@dataclass(frozen=True)
class StreamLimits:
    """What one replica allows its sessions (`twostep serve --stream-*` flags)."""

    max_sessions: int = 256
    max_message_bytes: int = 1 << 20
    max_fps: float = 1000.0
    idle_timeout_s: float = 120.0
    handshake_timeout_s: float = 10.0
    token: str | None = None
    monitor_period_s: float = 1.0
    settle_s: float = 2.0  # a rebalance leaves sessions younger than this where they are

    def public(self) -> dict:
        return {"max_sessions": self.max_sessions, "max_message_bytes": self.max_message_bytes,
                "max_fps": self.max_fps, "idle_timeout_s": self.idle_timeout_s,
                "handshake_timeout_s": self.handshake_timeout_s, "auth": self.token is not None}


class SessionHost(Protocol):
    """What a session needs of its replica (EdgeTail)."""

    series_sha256: str

    async def open_route(self, route_id: int, variant: str, split: str) -> Route: ...

    async def run_tensor(self, variant: str, split: str, tensor: np.ndarray, nbytes: int) -> dict: ...

    def report_uplink(self, link_id: str, uplink_bps: float) -> None: ...

    def tail_mean_ms(self, variant: str, split: str) -> float | None: ...


@dataclass
class Session:
    """One device's session and its counters."""

    id: int
    websocket: Any
    opened: float = field(default_factory=time.monotonic)
    link: str = ""
    routes: dict[int, Route] = field(default_factory=dict)
    frames: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    refused: int = 0
    errors: int = 0
    closing: bool = False
    server_ms: float | None = None
    _tokens: float = 0.0
    _refill: float = field(default_factory=time.monotonic)

    def note_server_ms(self, ms: float) -> None:
        """Running mean of the replica's time per frame (read to answer sent)."""
        self.server_ms = ms if self.server_ms is None else self.server_ms + 0.1 * (ms - self.server_ms)

    def take_token(self, max_fps: float) -> bool:
        """A token bucket of one second of frames: False when the session is over its rate."""
        now = time.monotonic()
        self._tokens = min(max_fps, self._tokens + (now - self._refill) * max_fps)
        self._refill = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def summary(self) -> dict:
        return {"id": self.id, "link": self.link, "routes": len(self.routes), "frames": self.frames,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out, "refused": self.refused,
                "errors": self.errors, "age_s": round(time.monotonic() - self.opened, 1),
                "server_ms": None if self.server_ms is None else round(self.server_ms, 4)}


def _find_replica() -> Any | None:
    """Serve's own replica object in this process (the actor instance Ray holds for this
    worker), whose `_shutting_down` turns True when it starts to drain. Ray Serve gives user
    code no public signal of a drain; twostep pins Ray, and `tests/integration` checks that
    sessions hear 1012 from a replica that drains."""
    try:
        import ray._private.worker as ray_worker

        worker = ray_worker.global_worker
        actor = worker.actors.get(worker.actor_id)
    except Exception:  # noqa: BLE001 - not in a Ray actor, or Ray's internals moved
        return None
    replica = getattr(actor, "_replica_impl", None)
    return replica if hasattr(replica, "_shutting_down") else None


class SessionTable:
    """A replica's sessions: admission, limits, counters, drain and rebalance."""

    def __init__(self, limits: StreamLimits, replica_id: str = "", board: Any | None = None):
        self.limits = limits
        self.replica_id = replica_id
        self.board = board  # LinkBoardClient-like: count_sessions(replica, n) -> {replicas, sessions}
        self.sessions: dict[int, Session] = {}
        self.draining = False
        self.opened = self.refused = self.reconnects_asked = 0
        self._ids = itertools.count(1)
        self._monitor: asyncio.Task | None = None
        self._replica_ref: Any = None
        self._replica_looked_up = False
        self._last_rebalance = -math.inf
        self.share: dict = {}

    # ---- admission ----
    async def admit(self, websocket: Any) -> Session | None:
        """Accept the connection; close it at once (and return None) when the replica drains,
        holds its cap of sessions, or the token is wrong."""
        self.ensure_monitor()
        await websocket.accept()
        refusal = None
        if self.draining:
            refusal = (CLOSE_RECONNECT, "replica draining; reconnect")
        elif len(self.sessions) >= self.limits.max_sessions:
            refusal = (CLOSE_TRY_LATER, f"replica holds its cap of {self.limits.max_sessions} sessions")
        elif self.limits.token is not None:
            given = websocket.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.limits.token}".encode()):
                refusal = (Unauthorized.close_code, "Unauthorized: a valid bearer token is required")
        if refusal is not None:
            self.refused += 1
            logger.warning("session refused (%d): %s", *refusal)
            await _close(websocket, *refusal)
            await _await_close_reply(websocket)
            return None
        session = Session(next(self._ids), websocket)
        session._tokens = self.limits.max_fps
        self.sessions[session.id] = session
        self.opened += 1
        return session

    def release(self, session: Session) -> None:
        self.sessions.pop(session.id, None)

    # ---- drain and rebalance ----
    def ensure_monitor(self) -> None:
        """Start the drain and rebalance monitor (once) on the running loop."""
        if self._monitor is None or self._monitor.done():
            self._monitor = asyncio.get_running_loop().create_task(self._watch())

    def replica_draining(self) -> bool:
        if not self._replica_looked_up:
            self._replica_looked_up = True
            found = _find_replica()
            self._replica_ref = weakref.ref(found) if found is not None else None
        replica = self._replica_ref() if self._replica_ref is not None else None
        return bool(getattr(replica, "_shutting_down", False))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.limits.monitor_period_s)
            try:
                await self.check()
            except Exception:  # noqa: BLE001 - the monitor must outlive any one failure
                logger.exception("session monitor")

    async def check(self) -> None:
        """One round of the monitor: drain, else rebalance."""
        if not self.draining and self.replica_draining():
            self.draining = True
            logger.info("replica draining: asking %d session(s) to reconnect", len(self.sessions))
            await self.ask_reconnect(list(self.sessions.values()), "replica draining")
            return
        if self.board is None or self.draining:
            return
        self.share = await self.board.count_sessions(self.replica_id, len(self.sessions))
        replicas, total = self.share.get("replicas", 1), self.share.get("sessions", 0)
        fair = math.ceil(total / max(replicas, 1))
        excess = len(self.sessions) - fair
        cooled = time.monotonic() - self._last_rebalance > 3 * self.limits.monitor_period_s
        if replicas > 1 and excess > max(1, fair // 10) and cooled:
            self._last_rebalance = time.monotonic()
            # sessions that just moved here stay: moving them again would only churn
            settled = [s for s in self.sessions.values()
                       if time.monotonic() - s.opened > self.limits.settle_s]
            newest = sorted(settled, key=lambda s: s.opened)[-excess:] if settled else []
            logger.info("rebalance: %d of %d session(s) to the %d other replica(s)",
                        excess, len(self.sessions), replicas - 1)
            await self.ask_reconnect(newest, "rebalance")

    async def ask_reconnect(self, sessions: list[Session], why: str) -> None:
        """Close `sessions` with 1012, all at once (a close waits for the device's reply)."""
        asked = [s for s in sessions if not s.closing]
        for session in asked:
            session.closing = True
        self.reconnects_asked += len(asked)
        await asyncio.gather(*(_close(s.websocket, CLOSE_RECONNECT, f"{why}; reconnect") for s in asked))

    def health(self) -> dict:
        return {"sessions": len(self.sessions), "opened": self.opened, "refused": self.refused,
                "reconnects_asked": self.reconnects_asked, "draining": self.draining,
                "drain_signal": "found" if self._replica_ref is not None else
                                ("missing" if self._replica_looked_up else "not looked up"),
                "limits": self.limits.public(), "share": self.share,
                "frames": sum(s.frames for s in self.sessions.values()),
                "per_session": [s.summary() for s in list(self.sessions.values())[:50]]}


async def _close(websocket: Any, code: int, reason: str) -> None:
    try:
        await websocket.close(code=code, reason=reason)
    except Exception:  # noqa: BLE001 - already closed or gone: nothing to tell
        pass


async def _await_close_reply(websocket: Any, timeout_s: float = CLOSE_REPLY_TIMEOUT_S) -> None:
    """Read (and drop) what the device still sends until its close frame answers ours. Ending
    the session before then would close the TCP connection with the device's frames unread,
    and the reset that follows can discard our close frame, code and reason, on the device."""
    try:
        async with asyncio.timeout(timeout_s):
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass
    except Exception:  # noqa: BLE001 - timed out or already gone: the close is all we owed
        pass


async def _receive(websocket: Any, timeout_s: float, code: int, what: str) -> bytes | str | None:
    """The next message (bytes or text), or None when the peer went away."""
    try:
        async with asyncio.timeout(timeout_s):  # no task per message, unlike wait_for
            message = await websocket.receive()
    except TimeoutError:
        raise SessionTimeout(f"no {what} within {timeout_s:g} s", code) from None
    if message["type"] == "websocket.disconnect":
        return None
    if message.get("bytes") is not None:
        return message["bytes"]
    return message.get("text")


class IdleWatch:
    """A session's idle timeout as one timer, not one per message (a timer costs more than the
    rest of a frame's bookkeeping): a wait for a message notes when it began; the timer, when it
    fires, moves to that time plus the timeout, or ends the wait with SessionTimeout."""

    def __init__(self, timeout_s: float):
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.timeout_s = timeout_s
        self.last = self.loop.time()
        self.waiting = self.expired = False
        self._timer = self.loop.call_at(self.last + timeout_s, self._fire)

    def _fire(self) -> None:
        now = self.loop.time()
        if not self.waiting or now < self.last + self.timeout_s:  # busy with a frame, or not due
            due = (self.last if self.waiting else now) + self.timeout_s
            self._timer = self.loop.call_at(due, self._fire)
            return
        self.expired = True
        self.task.cancel()

    async def receive(self, websocket: Any) -> bytes | str | None:
        """The next message (bytes or text), or None when the peer went away."""
        self.waiting, self.last = True, self.loop.time()
        try:
            message = await websocket.receive()
        except asyncio.CancelledError:
            if self.expired and self.task.uncancel() == 0:
                raise SessionTimeout(f"no message within {self.timeout_s:g} s", CLOSE_IDLE) from None
            raise
        finally:
            self.waiting = False
        if message["type"] == "websocket.disconnect":
            return None
        if message.get("bytes") is not None:
            return message["bytes"]
        return message.get("text")

    def stop(self) -> None:
        self._timer.cancel()


def _accept_message(session: Session, routes: list[Route], limits: StreamLimits,
                    series_sha256: str, replica_id: str) -> str:
    return json.dumps({"type": "accept", "protocol": PROTOCOL, "version": VERSION,
                       "session": session.id, "replica": replica_id, "series": series_sha256,
                       "routes": [r.to_json() for r in routes], "limits": limits.public()},
                      separators=(",", ":"))


def _max_message_bytes(limits: StreamLimits, session: Session) -> int:
    """A session's largest message: its limit, and never more than its largest route needs."""
    return min(limits.max_message_bytes, FRAME_HEADER_BYTES + max(
        r.max_payload_bytes for r in session.routes.values()))


async def _declare(host: SessionHost, session: Session, decls) -> list[Route]:
    variants = {r.variant for r in session.routes.values()} | {d.variant for d in decls}
    if len(variants) > MAX_VARIANTS_PER_SESSION:
        raise BadHello(f"a session's routes name at most {MAX_VARIANTS_PER_SESSION} variants, "
                       f"got {len(variants)} (each one is a model a replica loads)")
    routes = []
    for decl in decls:
        try:
            route = await host.open_route(len(session.routes), decl.variant, decl.split)
        except SessionError:
            raise
        except Exception as err:  # noqa: BLE001 - the edge's fault, said as such (1011)
            logger.exception("session route %s@%s", decl.variant, decl.split)
            raise EdgeFault(f"{decl.variant}@{decl.split} could not be opened: "
                            f"{type(err).__name__}: {err}") from None
        session.routes[route.id] = route
        routes.append(route)
    return routes


async def run_session(websocket: Any, host: SessionHost, table: SessionTable) -> None:
    """Serve one device session until it ends; any fault closes only this session."""
    session = await table.admit(websocket)
    if session is None:
        return
    limits = table.limits
    idle: IdleWatch | None = None
    try:
        first = await _receive(websocket, limits.handshake_timeout_s, CLOSE_HANDSHAKE_TIMEOUT, "hello")
        if first is None:
            return
        hello: Hello = parse_hello(first)
        if hello.series and not host.series_sha256.startswith(hello.series):
            raise SeriesMismatch(f"the edge serves series {host.series_sha256[:12]}, the device "
                                 f"has {hello.series[:12]}; fetch the edge's heads again")
        session.link = hello.link
        routes = await _declare(host, session, hello.routes)
        await websocket.send_text(_accept_message(session, routes, limits, host.series_sha256,
                                                  table.replica_id))
        max_bytes = _max_message_bytes(limits, session)
        last_stats = -math.inf
        idle = IdleWatch(limits.idle_timeout_s)
        while True:
            message = await idle.receive(websocket)
            if message is None:
                return
            if session.closing:  # asked to reconnect: wait for the device's close reply
                await _await_close_reply(websocket)
                return
            if isinstance(message, str):
                if not session.take_token(limits.max_fps):  # control messages count as frames
                    raise TooManyMessages(f"control messages over {limits.max_fps:g}/s")
                await _control(websocket, host, session, message)
                max_bytes = _max_message_bytes(limits, session)
                continue
            if len(message) > max_bytes:
                raise MessageTooBig(f"message of {len(message)} bytes; this session's frames are "
                                    f"at most {max_bytes}")
            received = time.perf_counter()
            out = await _frame(host, session, message, hello, limits.max_fps)
            session.bytes_out += len(out)
            await websocket.send_bytes(out)
            answered = time.perf_counter()
            session.note_server_ms((answered - received) * 1000)
            if answered - last_stats > STATS_PERIOD_S:
                last_stats = answered
                await websocket.send_text(_stats_message(host, session))
    except SessionError as err:
        session.errors += 1
        logger.warning("session %d (%s) closed: %s", session.id, session.link, close_reason(err))
        await _close(websocket, err.close_code, close_reason(err))
        await _await_close_reply(websocket)
    except FrameError as err:
        session.errors += 1
        logger.warning("session %d (%s) closed: %s", session.id, session.link, close_reason(err))
        await _close(websocket, CLOSE_BAD_FRAME, close_reason(err))
        await _await_close_reply(websocket)
    except (RuntimeError, OSError):  # the socket closed under us (drain, rebalance, peer gone)
        if session.closing:  # asked to reconnect while a frame ran: still owe the close reply
            await _await_close_reply(websocket)
    finally:
        if idle is not None:
            idle.stop()
        table.release(session)


def _stats_message(host: SessionHost, session: Session) -> str:
    """The edge's mean tail time per route of this session (the device subtracts it from the
    time to an answer when it measures its uplink)."""
    tail_ms = {}
    for route in session.routes.values():
        mean = host.tail_mean_ms(route.variant, route.split)
        if mean is not None:
            tail_ms[str(route.id)] = round(mean, 4)
    return json.dumps({"type": "stats", "tail_ms": tail_ms, "frames": session.frames,
                       "server_ms": None if session.server_ms is None else round(session.server_ms, 4)},
                      separators=(",", ":"))


async def _frame(host: SessionHost, session: Session, message: bytes, hello: Hello,
                 max_fps: float) -> bytes:
    """The answer to one frame, packed."""
    frame = parse_session_frame(message, session.routes)
    session.bytes_in += len(message)
    if not session.take_token(max_fps):
        session.refused += 1
        return pack_answer(Answer(frame.seq, KIND_ERROR, 429,
                                  error=f"over {max_fps:g} frames/s; resend later"))
    decode_start = time.perf_counter_ns()
    tensor = decode_values(frame)
    decode_ms = (time.perf_counter_ns() - decode_start) / 1e6
    route = frame.route
    result = await host.run_tensor(route.variant, route.split, tensor, len(message))
    if "error" in result:
        session.errors += 1
        return pack_answer(Answer(frame.seq, KIND_ERROR, int(result["status"]),
                                  error=str(result["error"])))
    session.frames += 1
    row = result["logits"][0]
    best = int(row.argmax())
    work_us = round((decode_ms + result.get("tail_ms", 0.0)) * 1000) if hello.timings else None
    if hello.logits:
        return pack_answer(Answer(frame.seq, KIND_LOGITS, best, tuple(row.tolist()), work_us=work_us))
    return pack_class_answer(frame.seq, best, work_us)


async def _control(websocket: Any, host: SessionHost, session: Session, text: str) -> None:
    control = parse_control(text)
    if control["type"] == "uplink":
        host.report_uplink(session.link, float(control["uplink_bps"]))
        return
    if control["type"] == "probe":  # answered at once: the device times its upload
        await websocket.send_text(json.dumps({"type": "probe", "bytes": len(text)}, separators=(",", ":")))
        return
    if control["type"] == "routes":
        routes = await _declare(host, session, parse_route_decls(control["routes"], len(session.routes)))
        await websocket.send_text(json.dumps({"type": "routes", "routes": [r.to_json() for r in routes]},
                                             separators=(",", ":")))
        return
    raise Unsupported(f"control type {control['type']!r}")
