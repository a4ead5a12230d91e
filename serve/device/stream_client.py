"""The device side of a session (`WS /v1/tail/stream`): one WebSocket for a stream of frames.

`DeviceSession` opens a session on the edge, declares (variant, split) routes once and in-band
as the device's plan changes, sends frames (10 bytes besides the coded values) and reads answers
(5 bytes: sequence number and class). It pipelines: `send` returns at once with the frame's
sequence number, and frames may go before earlier answers came back (`window`). When the
connection or its replica dies, or the edge asks it to (close 1012: drain or rebalance; 1013:
the replica is full), it reconnects, declares its routes again and resends every unanswered
frame by sequence number, so none is lost. It measures its uplink from its own frames: the time
to an answer less the round trip (WebSocket ping) and the edge's reported tail time.
Uses the `websockets` package (pure Python); no torch, no Ray.
"""

from __future__ import annotations

import functools
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.session_codec import encode_values
from pipeline.session_wire import (
    CLOSE_TRY_LATER,
    RECONNECT_CODES,
    SEQ_MODULO,
    Answer,
    Hello,
    Route,
    RouteDecl,
    pack_session_frame,
    parse_answer,
)

STREAM_PATH = "/v1/tail/stream"
# Upgrade refusals that mean "this edge has no session route" (before any session was accepted)
NO_SESSIONS_STATUSES = (403, 404, 405, 426)
PING_TIMEOUT_S = 2.0
PROBE_TIMEOUT_S = 0.25  # a probe not answered by then: the link is slower than ~33 kbit/s or stalled


class SessionUnavailable(RuntimeError):
    """The edge offers no session route (an older edge, or a proxy that refuses WebSockets)."""


class FrameLate(TimeoutError):
    """A frame's answer did not come within the time the caller gave it."""


class SessionClosed(RuntimeError):
    """The edge closed the session for a reason that reconnecting would not cure."""

    def __init__(self, code: int | None, reason: str):
        super().__init__(f"session closed ({code}): {reason}")
        self.code = code
        self.reason = reason


@dataclass
class Pending:
    """A frame sent and not answered yet."""

    route: tuple[str, str]
    message: bytes
    sent: float
    alone: bool  # nothing else was in flight when it went: its answer time is a clean sample
    generation: int = -1  # the connection it was last sent on


@functools.cache
def _connection_closed() -> type[Exception]:
    """websockets' ConnectionClosed, imported once (its lazy module attribute costs ~4 us a look-up,
    three per frame)."""
    from websockets.exceptions import ConnectionClosed

    return ConnectionClosed


def _connect(url: str, headers: dict[str, str], timeout_s: float):
    from websockets.sync.client import connect

    kwargs = dict(additional_headers=headers or None, compression=None, open_timeout=timeout_s,
                  close_timeout=2, ping_interval=None, max_size=2 ** 22, proxy=None)
    try:
        return connect(url, legacy=True, **kwargs)
    except TypeError:  # websockets before 16 has no `legacy` (and connects directly)
        kwargs.pop("proxy")
        return connect(url, **kwargs)


class DeviceSession:
    """One device's session with the edge at `url` (http://HOST:PORT) as link `link`."""

    def __init__(self, url: str, link: str = "device", token: str | None = None,
                 series: str | None = None, logits: bool = False, timeout_s: float = 30.0,
                 throttle_bps: float | None = None, max_reconnects: int = 20,
                 min_sample_bytes: int = 512, timings: bool = False,
                 before_send: Callable[[int], None] | None = None):
        host = url.split("://", 1)[-1].rstrip("/")
        self.url = f"ws://{host}{STREAM_PATH}"
        self.link, self.token, self.series, self.logits = link, token, series, logits
        self.timings = timings  # answers carry the edge's work on each frame (4 bytes more)
        self.timeout_s = timeout_s
        self.throttle_bps = throttle_bps
        # called with a message's size before each frame or probe goes (a link emulation's hook)
        self.before_send = before_send
        self.max_reconnects = max_reconnects
        self.min_sample_bytes = min_sample_bytes
        self._ws: Any = None
        self.decls: list[RouteDecl] = []
        self.routes: dict[tuple[str, str], Route] = {}
        self.pending: OrderedDict[int, Pending] = OrderedDict()
        self.answers: dict[int, tuple[Answer, float]] = {}
        self._seq = 0
        self.reconnects = 0
        self.rate_limited = 0  # frames the edge answered 429 (over its frame rate) and resent
        self.frames_sent = self.bytes_sent = self.bytes_received = 0
        self.rtt_ms: float | None = None
        self.uplink_bps: float | None = None
        self.last_sample: tuple[int, float] | None = None  # (bytes, seconds) of the newest upload timed
        self.tail_ms: dict[int, float] = {}
        self.server_ms: float | None = None  # the replica's mean time per frame, read to answered
        self.accept: dict = {}
        self.last_close: tuple[int | None, str] | None = None
        self.close_codes: list[int | None] = []  # every close this session heard (None: abrupt)
        self._noted: Any = None  # the connection whose close is in close_codes
        self._generation = 0  # connections opened so far: a frame records the one it went on
        self._accepted = False  # a session was accepted once: later refusals are outages
        self._stale_probes = 0  # probes that timed out: their answers, when they come, are not timed

    # ---- connection ----
    def _connect(self) -> None:
        from websockets.exceptions import InvalidHandshake, InvalidStatus

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            self._ws = _connect(self.url, headers, self.timeout_s)
        except InvalidStatus as err:
            status = err.response.status_code
            if status in NO_SESSIONS_STATUSES and not self._accepted:
                raise SessionUnavailable(f"{self.url}: {err}") from err
            # a 5xx (no live replica behind the ingress, e.g. the only tail being replaced)
            raise ConnectionError(f"cannot open a session at {self.url}: {err}") from err
        except (InvalidHandshake, OSError, TimeoutError) as err:
            raise ConnectionError(f"cannot open a session at {self.url}: {err}") from err
        self._generation += 1
        if self.decls:
            hello = Hello(self.link, tuple(self.decls), self.logits, self.series, self.timings)
            self._ws.send(hello.to_json())
            self.accept = self._await_text("accept")
            self.routes.clear()
            self._take_routes(self.accept["routes"])
            self._accepted = True
        self._ping()

    def _ping(self) -> None:
        start = time.perf_counter()
        pong = self._ws.ping()
        # a pong never comes if the edge closes meanwhile (a rebalance): do not wait for long
        if pong.wait(min(self.timeout_s, PING_TIMEOUT_S)):
            rtt = (time.perf_counter() - start) * 1000
            self.rtt_ms = rtt if self.rtt_ms is None else min(self.rtt_ms, rtt)

    def close(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:  # noqa: BLE001
                pass
            self._ws = None

    def __enter__(self) -> DeviceSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _take_routes(self, entries: list) -> None:
        for entry in entries:
            route = Route.from_json(entry)
            self.routes[(route.variant, route.split)] = route

    def _await_text(self, kind: str, timeout_s: float | None = None) -> dict:
        """Read until the text message of `kind` (answers that arrive meanwhile are kept)."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            message = self._recv(max(0.01, deadline - time.monotonic()))
            if message is None:
                raise TimeoutError(f"no {kind} message from the edge in {timeout_s:g} s")
            if isinstance(message, str):
                document = json.loads(message)
                if document.get("type") == kind and not (kind == "probe" and self._stale_probes):
                    return document
                self._on_text(document)
            else:
                self._on_answer(message)

    def _recv(self, timeout_s: float) -> bytes | str | None:
        try:
            message = self._ws.recv(timeout=timeout_s)
        except TimeoutError:
            return None
        except _connection_closed() as err:
            self._closed(err)
            raise
        self.bytes_received += len(message)
        return message

    # ---- routes and frames ----
    def route(self, variant: str, split: str) -> Route:
        """The route of (variant, split), declared in-band if new (one control message)."""
        key = (variant, split)
        route = self.routes.get(key)
        if route is not None:  # only declared routes are in `routes` (the edge's answers to them)
            return route
        if RouteDecl(variant, split) not in self.decls:
            self.decls.append(RouteDecl(variant, split))
            if self._ws is None or key in self.routes:
                self._with_reconnect(lambda: None)
            elif len(self.decls) == 1 or not self.accept:
                self._resync()
            else:
                def declare() -> None:
                    if key in self.routes:  # a reconnect meanwhile declared it in its hello
                        return
                    self._ws.send(json.dumps({"type": "routes", "routes": [
                        {"variant": variant, "split": split}]}, separators=(",", ":")))
                    self._take_routes(self._await_text("routes")["routes"])

                self._with_reconnect(declare)
        return self.routes[key]

    def _resync(self) -> None:
        """Close and reconnect (declaring every route), resending unanswered frames."""
        self.close()
        self._reconnect_loop()

    def send(self, variant: str, split: str, features: np.ndarray) -> int:
        """Code `features` (1, C, H, W) for (variant, split), send it; returns its sequence number."""
        return self.send_coded(variant, split, self.encode(variant, split, features))

    def encode(self, variant: str, split: str, features: np.ndarray) -> tuple[bool, int, int, bytes]:
        """The coded values of `features` for (variant, split) (`encode_values` of its route)."""
        return encode_values(features, self.route(variant, split))

    def send_coded(self, variant: str, split: str, coded: tuple[bool, int, int, bytes]) -> int:
        """Send values coded by `encode` as the next frame; returns its sequence number."""
        route = self.route(variant, split)
        lz4, scale_bits, zero_bits, payload = coded
        seq = self._seq
        self._seq = (self._seq + 1) % SEQ_MODULO
        if seq in self.pending:
            raise RuntimeError(f"{SEQ_MODULO} frames unanswered: the window is too large")
        message = pack_session_frame(route.id, seq, lz4, scale_bits, zero_bits, payload)
        self.answers.pop(seq, None)  # an answer of 65,536 frames ago nobody waited for
        pending = Pending((variant, split), message, time.perf_counter(), not self.pending)
        self.pending[seq] = pending
        self._with_reconnect(self._transmit, pending)
        return seq

    def _transmit(self, pending: Pending) -> None:
        """Send a pending frame on the current connection, unless a reconnect already resent it."""
        if pending.generation != self._generation:
            self._send_message(pending.message)
            pending.generation = self._generation

    def _emulate_link(self, nbytes: int) -> None:
        if self.before_send is not None:
            self.before_send(nbytes)
        if self.throttle_bps is not None:  # the device side of an emulated link
            time.sleep(nbytes * 8.0 / self.throttle_bps)

    def _send_message(self, message: bytes) -> None:
        self._emulate_link(len(message))
        self._ws.send(message)
        self.frames_sent += 1
        self.bytes_sent += len(message)

    def wait(self, seq: int, within_s: float | None = None) -> tuple[Answer, float]:
        """The answer to frame `seq` and when it came (perf_counter s); reconnects and resends
        as needed. Raises SessionClosed when the edge refused the session for good, and
        FrameLate when `within_s` (from now) passed first (the frame stays pending: `give_up`)."""
        limit = self.timeout_s * 4 if within_s is None else within_s
        deadline = time.monotonic() + limit
        while seq not in self.answers:
            left = deadline - time.monotonic()
            if left <= 0:
                if within_s is not None:
                    raise FrameLate(f"frame {seq} unanswered within {within_s * 1000:.0f} ms")
                raise TimeoutError(f"frame {seq} unanswered after {limit:g} s")
            message = self._with_reconnect(self._recv, min(self.timeout_s, left))
            if message is None:
                continue
            if isinstance(message, str):
                self._on_text(json.loads(message))
            else:
                self._on_answer(message)
        return self.answers.pop(seq)

    def give_up(self, seq: int) -> None:
        """Forget frame `seq` (its deadline passed and the device answered it itself): it is not
        resent after a reconnect, and its answer, should one still come, is dropped."""
        self.pending.pop(seq, None)
        self.answers.pop(seq, None)

    def _on_text(self, document: dict) -> None:
        if document.get("type") == "probe" and self._stale_probes:
            self._stale_probes -= 1  # the late answer of a probe that timed out
        elif document.get("type") == "stats":
            self.tail_ms.update({int(k): float(v) for k, v in document.get("tail_ms", {}).items()})
            self.server_ms = document.get("server_ms")
        elif document.get("type") == "routes":
            self._take_routes(document["routes"])

    def _on_answer(self, message: bytes) -> None:
        answer = parse_answer(message)
        pending = self.pending.get(answer.seq)
        if pending is None:
            return  # answered already (a frame resent after a reconnect came back twice)
        if not answer.ok and answer.value == 429:
            self.rate_limited += 1
            time.sleep(0.05)  # over the session's frame rate: the same frame goes again
            pending.sent, pending.alone, pending.generation = time.perf_counter(), False, -1
            self._with_reconnect(self._transmit, pending)
            return
        now = time.perf_counter()
        del self.pending[answer.seq]
        self.answers[answer.seq] = (answer, now)
        self._learn_uplink(pending, now, answer.work_us)

    def _learn_uplink(self, pending: Pending, answered: float, work_us: int | None = None) -> None:
        if not pending.alone or len(pending.message) < self.min_sample_bytes:
            return
        route = self.routes.get(pending.route)
        if work_us is not None:  # this frame's own work on the edge (a session with timings)
            tail_ms = work_us / 1000.0
        else:
            tail_ms = self.tail_ms.get(route.id, 0.0) if route else 0.0
        upload_ms = (answered - pending.sent) * 1000 - (self.rtt_ms or 0.0) - tail_ms
        if upload_ms > 0:
            self.uplink_bps = len(pending.message) * 8.0 / (upload_ms / 1000.0)
            self.last_sample = (len(pending.message), upload_ms / 1000.0)

    def probe(self, nbytes: int = 1024, timeout_s: float = PROBE_TIMEOUT_S) -> tuple[int, float] | None:
        """Time an upload of about `nbytes` (a probe control message the edge answers at once):
        (bytes, seconds on the uplink: time to the answer less the ping round trip), or None
        when the time is within the round trip (too fast to measure). A stalled link raises
        TimeoutError after `timeout_s`; a closed session, websockets' ConnectionClosed."""
        pad = "." * max(0, int(nbytes) - len('{"type":"probe","pad":""}'))
        message = json.dumps({"type": "probe", "pad": pad}, separators=(",", ":"))
        start = time.perf_counter()
        self._emulate_link(len(message))
        self._with_reconnect(lambda: self._ws.send(message))
        self.bytes_sent += len(message)
        try:
            self._await_text("probe", timeout_s)
        except TimeoutError:
            self._stale_probes += 1
            raise
        seconds = time.perf_counter() - start - (self.rtt_ms or 0.0) / 1000.0
        if seconds <= 0:
            return None
        self.last_sample = (len(message), seconds)
        return self.last_sample

    def report_uplink(self, uplink_bps: float) -> None:
        """Tell the edge this device's measured uplink (for its planner's link state)."""
        self._with_reconnect(lambda: self._ws.send(json.dumps(
            {"type": "uplink", "uplink_bps": float(uplink_bps)}, separators=(",", ":"))))

    # ---- failures ----
    def _give_up(self, code: int | None) -> bool:
        """After this close code the session is not reconnected (see RECONNECT_CODES)."""
        return code is not None and code not in RECONNECT_CODES

    def _with_reconnect(self, action, *args):
        """`action(*args)`, reconnecting (and resending) when the connection fails under it."""
        ConnectionClosed = _connection_closed()  # noqa: N806 - a class
        for _ in range(self.max_reconnects):
            try:
                if self._ws is None:
                    self._reconnect_loop()
                return action(*args)
            except (ConnectionClosed, ConnectionError, OSError) as err:
                code = self._closed(err) if isinstance(err, ConnectionClosed) else None
                if self._give_up(code):
                    raise SessionClosed(code, self.last_close[1] if self.last_close else "") from err
                self._ws = None
        raise ConnectionError(f"the session at {self.url} closed {self.max_reconnects} times in a row")

    def _closed(self, err) -> int | None:
        """Note a close (once per connection) and return its code (None: no close frame)."""
        code = err.rcvd.code if err.rcvd is not None else None
        if self._ws is not None and self._noted is not self._ws:
            self._noted = self._ws
            self.close_codes.append(code)
        self.last_close = (code, err.rcvd.reason if err.rcvd is not None else "")
        return code

    def _reconnect_loop(self) -> None:
        """Connect again (backing off), declare the routes, resend every unanswered frame."""
        for attempt in range(self.max_reconnects):
            try:
                self._connect()
                for pending in self.pending.values():
                    # route ids follow the declaration order, which a reconnect keeps
                    if pending.message[0] != self.routes[pending.route].id:
                        raise RuntimeError(f"route {pending.route} changed id on reconnect")
                    pending.sent, pending.alone = time.perf_counter(), False
                    self._transmit(pending)
                self.reconnects += 1
                return
            except (ConnectionError, OSError, TimeoutError):
                time.sleep(min(0.05 * 2 ** attempt, 1.0))
            except Exception as err:  # noqa: BLE001 - closed during the hello: 1013, 1012
                if not isinstance(err, _connection_closed()):
                    raise
                code = self._closed(err)
                if self._give_up(code):
                    raise SessionClosed(code, err.rcvd.reason) from err
                time.sleep(min(0.05 * 2 ** attempt, 1.0) if code != CLOSE_TRY_LATER else 0.2)
        raise ConnectionError(f"no session at {self.url} after {self.max_reconnects} attempts")
