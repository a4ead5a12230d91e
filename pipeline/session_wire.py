"""Byte layout of a device session (`WS /v1/tail/stream`): its messages, checks and errors.

A session says once what is fixed for a (variant, split) route (shape, bits, per-channel, the
variant) in a JSON hello, so a frame carries only what changes: its route id, a sequence number,
the quantisation parameters, a CRC-16 and the coded values (10 bytes besides the values), and an
answer only the sequence number and the class (5 bytes). The values themselves are coded by
`pipeline.session_codec`. `docs/wire-format.md` ("Sessions") describes the bytes; keep the two in
step. No Ray and no torch here: the device client uses this module too.
"""

from __future__ import annotations

import binascii
import json
import math
import re
import struct
from dataclasses import dataclass
from typing import NamedTuple

from pipeline.wire import (
    BadHeader,
    ChecksumMismatch,
    FrameError,
    LengthMismatch,
)

PROTOCOL = "twostep-stream"
VERSION = 1
# route id, flags, sequence number, scale (bfloat16), zero point (bfloat16), CRC-16
FRAME_HEADER = struct.Struct("<BBHHHH")
FRAME_HEADER_BYTES = FRAME_HEADER.size
_FRAME_HEAD, _CRC = struct.Struct("<BBHHH"), struct.Struct("<H")  # the header as packed: CRC apart
FLAG_LZ4 = 0x01
# sequence number, kind, class (or HTTP-like status for an error)
ANSWER_HEADER = struct.Struct("<HBH")
ANSWER_HEADER_BYTES = ANSWER_HEADER.size
KIND_CLASS, KIND_LOGITS, KIND_ERROR = 0, 1, 2
KIND_TIMED = 0x80  # kind bit 7: a u32 of the edge's work on the frame (us) follows the header
WORK_US = struct.Struct("<I")
TIMED_ANSWER = struct.Struct("<HBHI")  # the answer header and its work
SEQ_MODULO = 1 << 16
MAX_ROUTES = 255
MAX_HELLO_BYTES = 32768  # 255 routes with long variant ids fit
MAX_ERROR_TEXT = 200
MAX_CLOSE_REASON = 123  # a WebSocket close frame's reason is at most 123 bytes
LINK_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
VARIANT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
SPLIT_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
SERIES_ID = re.compile(r"^[0-9a-f]{8,64}$")

# Close codes (RFC 6455 section 7.4; 4000-4999 are the application's own).
CLOSE_NORMAL = 1000
CLOSE_TOO_BIG = 1009
CLOSE_RECONNECT = 1012  # the replica drains or rebalances: reconnect and resend unanswered frames
CLOSE_TRY_LATER = 1013  # the replica holds its cap of sessions: retry (another replica may take it)
CLOSE_BAD_HELLO = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_BAD_FRAME = 4402
CLOSE_UNKNOWN_ROUTE = 4404
CLOSE_HANDSHAKE_TIMEOUT = 4408
CLOSE_SERIES_MISMATCH = 4409
CLOSE_IDLE = 4410  # a device with a frame to send after it reconnects
CLOSE_EDGE_FAULT = 1011
CLOSE_UNSUPPORTED = 4415  # a text message where a frame was expected, or an unknown control type
# Codes after which a client reconnects (and resends); after any other it gives the session up.
RECONNECT_CODES = (1001, 1006, 1011, CLOSE_RECONNECT, CLOSE_TRY_LATER, CLOSE_IDLE)


class SessionError(ValueError):
    """A session-level fault; `close_code` is the WebSocket close code that reports it."""

    close_code = CLOSE_BAD_HELLO


class BadHello(SessionError):
    """The hello (or a control message) is not valid JSON of the session protocol."""

    close_code = CLOSE_BAD_HELLO


class Unauthorized(SessionError):
    """The session's bearer token is missing or wrong."""

    close_code = CLOSE_UNAUTHORIZED


class UnknownRoute(SessionError):
    """A declared route names a variant or split the edge does not serve."""

    close_code = CLOSE_UNKNOWN_ROUTE


class SeriesMismatch(SessionError):
    """The device's series is not the one the edge serves."""

    close_code = CLOSE_SERIES_MISMATCH


class TooManyMessages(SessionError):
    """Control messages faster than the session's frame rate."""

    close_code = 1008  # policy violation


class EdgeFault(SessionError):
    """The edge failed (a variant that cannot be loaded, a runtime error): not the device's fault."""

    close_code = CLOSE_EDGE_FAULT


class MessageTooBig(SessionError):
    """A message is larger than the session allows."""

    close_code = CLOSE_TOO_BIG


class Unsupported(SessionError):
    """A message of a kind that is not expected here."""

    close_code = CLOSE_UNSUPPORTED


class UnknownRouteId(FrameError):
    """A frame names a route id that the session did not declare."""


@dataclass(frozen=True)
class RouteDecl:
    """A (variant, split) the device may send frames for, as it declares it."""

    variant: str
    split: str


@dataclass(frozen=True)
class Route:
    """A declared route with what the edge fixed for it (said once, in the accept message).

    Attributes:
        shape: the frame's tensor shape, batch 1 included: (1, C, H, W).
        bits: bits per value (4..8, or 32 for float32).
        per_channel: per-channel parameters lead the payload (float32, 8 bytes a channel).
        max_payload_bytes: the largest payload a frame of this route may carry.
    """

    id: int
    variant: str
    split: str
    shape: tuple[int, ...]
    bits: int
    per_channel: bool
    max_payload_bytes: int

    def to_json(self) -> dict:
        return {"id": self.id, "variant": self.variant, "split": self.split, "shape": list(self.shape),
                "bits": self.bits, "per_channel": self.per_channel,
                "max_payload_bytes": self.max_payload_bytes}

    @classmethod
    def from_json(cls, entry: object) -> Route:
        """A route of the edge's accept message, checked (BadHello names the bad field)."""
        if not isinstance(entry, dict):
            raise BadHello(f"a route must be an object, got {type(entry).__name__}")
        try:
            route = cls(int(entry["id"]), str(entry["variant"]), str(entry["split"]),
                        tuple(int(d) for d in entry["shape"]), int(entry["bits"]),
                        bool(entry["per_channel"]), int(entry["max_payload_bytes"]))
        except (KeyError, TypeError, ValueError) as err:
            raise BadHello(f"route {str(entry)[:80]} is incomplete or mistyped: {err}") from None
        if not 0 <= route.id < MAX_ROUTES or not 1 <= len(route.shape) <= 4:
            raise BadHello(f"route id {route.id} or shape {route.shape} out of range")
        return route


@dataclass(frozen=True)
class Hello:
    """What a device declares when it opens a session."""

    link: str
    routes: tuple[RouteDecl, ...]
    logits: bool = False
    series: str | None = None
    timings: bool = False

    def to_json(self) -> str:
        return json.dumps({"protocol": PROTOCOL, "version": VERSION, "link": self.link,
                           "logits": self.logits, **({"timings": True} if self.timings else {}),
                           **({"series": self.series} if self.series else {}),
                           "routes": [{"variant": r.variant, "split": r.split} for r in self.routes]},
                          separators=(",", ":"))


def _load_json(text: str | bytes, what: str) -> dict:
    if isinstance(text, bytes | bytearray):
        raise Unsupported(f"the {what} is a text message (JSON), not binary")
    if len(text) > MAX_HELLO_BYTES:
        raise MessageTooBig(f"the {what} is {len(text)} characters, more than {MAX_HELLO_BYTES}")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise BadHello(f"the {what} is not JSON: {err}") from None
    if not isinstance(document, dict):
        raise BadHello(f"the {what} must be a JSON object")
    return document


def parse_route_decls(routes: object, already: int = 0) -> tuple[RouteDecl, ...]:
    """Declared routes from JSON: a list of {"variant", "split"} (1 to 255 in all, with
    `already` declared before)."""
    if not isinstance(routes, list) or not routes:
        raise BadHello("routes must be a non-empty list of {\"variant\": ..., \"split\": ...}")
    if already + len(routes) > MAX_ROUTES:
        raise BadHello(f"a session has at most {MAX_ROUTES} routes, {already + len(routes)} declared")
    decls = []
    for entry in routes:
        if not isinstance(entry, dict) or set(entry) != {"variant", "split"}:
            raise BadHello(f"a route is {{\"variant\": V, \"split\": S}}, got {str(entry)[:80]}")
        variant, split = entry["variant"], entry["split"]
        if not isinstance(variant, str) or not VARIANT_ID.match(variant):
            raise BadHello(f"variant must match {VARIANT_ID.pattern}, got {str(variant)[:80]!r}")
        if not isinstance(split, str) or not SPLIT_NAME.match(split):
            raise BadHello(f"split must match {SPLIT_NAME.pattern}, got {str(split)[:80]!r}")
        decls.append(RouteDecl(variant, split))
    return tuple(decls)


def parse_hello(text: str | bytes) -> Hello:
    """The device's hello, every field checked before anything is looked up or allocated."""
    document = _load_json(text, "hello")
    allowed = {"protocol", "version", "link", "logits", "timings", "series", "routes"}
    extra = sorted(set(document) - allowed)
    if extra:
        raise BadHello(f"unknown hello field(s) {extra}; known are {sorted(allowed)}")
    if document.get("protocol") != PROTOCOL:
        raise BadHello(f"protocol must be {PROTOCOL!r}, got {str(document.get('protocol'))[:40]!r}")
    if document.get("version") != VERSION:
        raise BadHello(f"session protocol version {str(document.get('version'))[:20]} is not "
                       f"supported; this edge speaks {VERSION}")
    link = document.get("link", "device")
    if not isinstance(link, str) or not LINK_ID.match(link):
        raise BadHello(f"link must match {LINK_ID.pattern}, got {str(link)[:80]!r}")
    logits = document.get("logits", False)
    if not isinstance(logits, bool):
        raise BadHello(f"logits must be true or false, got {str(logits)[:20]}")
    timings = document.get("timings", False)
    if not isinstance(timings, bool):
        raise BadHello(f"timings must be true or false, got {str(timings)[:20]}")
    series = document.get("series")
    if series is not None and (not isinstance(series, str) or not SERIES_ID.match(series)):
        raise BadHello(f"series must be a hex manifest sha256 (prefix), got {str(series)[:80]!r}")
    return Hello(link, parse_route_decls(document.get("routes")), logits, series, timings)


def parse_control(text: str | bytes) -> dict:
    """A control message after the hello: {"type": "routes", "routes": [...]} (declare more
    routes), {"type": "uplink", "uplink_bps": B} (the device's measured uplink) or
    {"type": "probe", "pad": "..."} (a bandwidth probe of the device's uplink: the edge answers
    {"type": "probe", "bytes": N} at once)."""
    document = _load_json(text, "control message")
    kind = document.get("type")
    if kind == "routes" and set(document) == {"type", "routes"}:
        return document
    if kind == "probe" and set(document) == {"type", "pad"}:
        if not isinstance(document["pad"], str):
            raise BadHello("a probe's pad must be a string")
        return document
    if kind == "uplink" and set(document) == {"type", "uplink_bps"}:
        bps = document["uplink_bps"]
        if isinstance(bps, bool) or not isinstance(bps, int | float) or not (
                math.isfinite(bps) and 1.0 <= bps <= 1e12):
            raise BadHello(f"uplink_bps must be a number in [1, 1e12], got {str(bps)[:40]}")
        return document
    raise Unsupported(f"control message must be {{\"type\": \"routes\", \"routes\": [...]}}, "
                      f"{{\"type\": \"uplink\", \"uplink_bps\": B}} or {{\"type\": \"probe\", "
                      f"\"pad\": \"...\"}}, got {str(document)[:80]}")


class SessionFrame(NamedTuple):
    """A parsed, checked frame of a session; `payload` still to be decoded by the route.
    (A named tuple, not a frozen dataclass: made once a frame, and a tuple is made ~5x faster.)"""

    route: Route
    seq: int
    lz4: bool
    scale_bits: int
    zero_bits: int
    payload: memoryview


def crc16(*parts: bytes | memoryview) -> int:
    """CRC-16/CCITT-FALSE (`binascii.crc_hqx`, initial value 0xFFFF) over `parts` in order."""
    crc = 0xFFFF
    for part in parts:
        crc = binascii.crc_hqx(part, crc)
    return crc


def pack_session_frame(route_id: int, seq: int, lz4: bool, scale_bits: int, zero_bits: int,
                       payload: bytes) -> bytes:
    """One frame of a session: the 10-byte header (CRC included) and the payload."""
    assert 0 <= route_id < MAX_ROUTES and 0 <= seq < SEQ_MODULO
    head = _FRAME_HEAD.pack(route_id, FLAG_LZ4 if lz4 else 0, seq, scale_bits, zero_bits)
    return b"".join((head, _CRC.pack(crc16(head, payload)), payload))


def parse_session_frame(message: bytes | memoryview, routes: dict[int, Route]) -> SessionFrame:
    """Check a frame against the session's routes. Order: whole header, route id, flags, CRC,
    the parameters' presence, the payload bound; nothing is allocated from its fields.

    Raises:
        FrameError: `LengthMismatch`, `UnknownRouteId`, `BadHeader`, `ChecksumMismatch`.
    """
    view = memoryview(message)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    if len(view) < FRAME_HEADER_BYTES:
        raise LengthMismatch(f"frame is {len(view)} bytes, shorter than the {FRAME_HEADER_BYTES}-byte header")
    route_id, flags, seq, scale_bits, zero_bits, crc = FRAME_HEADER.unpack_from(view)
    route = routes.get(route_id)
    if route is None:
        raise UnknownRouteId(f"route id {route_id} was not declared; declared are {sorted(routes)}")
    if flags & ~FLAG_LZ4:
        raise BadHeader(f"flags {flags:#04x} set reserved bits; only {FLAG_LZ4:#04x} is defined")
    payload = view[FRAME_HEADER_BYTES:]
    actual = crc16(view[:FRAME_HEADER_BYTES - 2], payload)
    if actual != crc:
        raise ChecksumMismatch(f"CRC-16 is {actual:#06x}, frame says {crc:#06x}")
    if (route.per_channel or route.bits == 32) and (scale_bits or zero_bits):
        raise BadHeader("scale and zero point must be 0 when per-channel or float32")
    if len(payload) > route.max_payload_bytes:
        raise LengthMismatch(f"payload is {len(payload)} bytes, route {route_id} allows "
                             f"{route.max_payload_bytes}")
    return SessionFrame(route, seq, bool(flags & FLAG_LZ4), scale_bits, zero_bits, payload)


class Answer(NamedTuple):
    """The edge's answer to one frame: its class (and logits when the session asked), or an
    error with an HTTP-like status (429: over the frame rate, 5xx: a fault of the edge)."""

    seq: int
    kind: int
    value: int  # the class, or the status of an error
    logits: tuple[float, ...] = ()
    error: str = ""
    work_us: int | None = None  # the edge's decode and tail time, when the session asked

    @property
    def ok(self) -> bool:
        return self.kind != KIND_ERROR


def _answer_head(seq: int, kind: int, value: int, work_us: int | None) -> bytes:
    """An answer's header, and the edge's work on the frame (clamped to a u32) when given."""
    if work_us is None or kind == KIND_ERROR:
        return ANSWER_HEADER.pack(seq, kind, value)
    return TIMED_ANSWER.pack(seq, kind | KIND_TIMED, value, min(max(int(work_us), 0), 0xFFFFFFFF))


def pack_class_answer(seq: int, value: int, work_us: int | None = None) -> bytes:
    """`pack_answer(Answer(seq, KIND_CLASS, value, work_us=work_us))`, the common answer, made
    without the Answer."""
    return _answer_head(seq, KIND_CLASS, value, work_us)


def pack_answer(answer: Answer) -> bytes:
    head = _answer_head(answer.seq, answer.kind, answer.value, answer.work_us)
    if answer.kind == KIND_LOGITS:
        return head + struct.pack(f"<{len(answer.logits)}f", *answer.logits)
    if answer.kind == KIND_ERROR:
        return head + answer.error.encode("utf-8", "replace")[:MAX_ERROR_TEXT]
    return head


def parse_answer(message: bytes | memoryview, max_classes: int = 65535) -> Answer:
    """The client's check of an answer (FrameError for anything the edge never sends)."""
    if type(message) is bytes and len(message) == TIMED_ANSWER.size and \
            message[2] == KIND_CLASS | KIND_TIMED:  # the common answer, as the client receives it
        seq, _, value, work_us = TIMED_ANSWER.unpack(message)
        return Answer(seq, KIND_CLASS, value, (), "", work_us)
    view = memoryview(message)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    if len(view) < ANSWER_HEADER_BYTES:
        raise LengthMismatch(f"answer is {len(view)} bytes, shorter than {ANSWER_HEADER_BYTES}")
    seq, kind, value = ANSWER_HEADER.unpack_from(view)
    rest = view[ANSWER_HEADER_BYTES:]
    work_us = None
    if kind & KIND_TIMED and kind & ~KIND_TIMED in (KIND_CLASS, KIND_LOGITS):
        if len(rest) < WORK_US.size:
            raise LengthMismatch(f"a timed answer is {len(view)} bytes, shorter than "
                                 f"{ANSWER_HEADER_BYTES + WORK_US.size}")
        kind, work_us, rest = kind & ~KIND_TIMED, WORK_US.unpack_from(rest)[0], rest[WORK_US.size:]
    if kind == KIND_CLASS:
        if rest:
            raise LengthMismatch(f"a class answer has no body, got {len(rest)} bytes")
        return Answer(seq, kind, value, work_us=work_us)
    if kind == KIND_LOGITS:
        if len(rest) % 4 or not 0 < len(rest) // 4 <= max_classes:
            raise LengthMismatch(f"logits body of {len(rest)} bytes is not 1..{max_classes} float32")
        return Answer(seq, kind, value, struct.unpack(f"<{len(rest) // 4}f", rest), work_us=work_us)
    if kind == KIND_ERROR:
        if len(rest) > MAX_ERROR_TEXT:
            raise LengthMismatch(f"error text of {len(rest)} bytes, at most {MAX_ERROR_TEXT}")
        return Answer(seq, kind, value, error=bytes(rest).decode("utf-8", "replace"))
    raise BadHeader(f"answer kind {kind} is unknown; valid are {KIND_CLASS}, {KIND_LOGITS}, {KIND_ERROR}")


def close_reason(err: Exception) -> str:
    """One line for a close frame: the error's class and message, cut to 123 bytes."""
    text = f"{type(err).__name__}: {err}".replace("\n", " ")
    return text.encode("utf-8")[:MAX_CLOSE_REASON].decode("utf-8", "ignore")


def read_token(path: str) -> str:
    """A bearer token from a file: one word of 1-4096 characters (ValueError naming the file)."""
    from pathlib import Path

    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"token file {path!r} does not exist")
    token = file.read_text().strip()
    if not token or len(token) > 4096 or any(c.isspace() for c in token):
        raise ValueError(f"token file {path!r} must hold one token of 1-4096 characters without spaces")
    return token
