"""The session protocol's bytes: sizes, the bfloat16 parameters, one error class per fault, and a
fuzz of the frame parser and decoder (only FrameErrors come out; allocations stay small)."""

import json
import math
import struct
import tracemalloc

import lz4.block
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.codec import CodecConfig, _dequantise, _unpack
from pipeline.session_codec import bf16_down, bf16_up, bf16_value, decode_values, encode_values, route_for
from pipeline.session_wire import (
    ANSWER_HEADER_BYTES,
    FRAME_HEADER_BYTES,
    KIND_CLASS,
    KIND_ERROR,
    KIND_LOGITS,
    KIND_TIMED,
    MAX_ROUTES,
    Answer,
    BadHello,
    FrameError,
    Hello,
    MessageTooBig,
    RouteDecl,
    UnknownRouteId,
    Unsupported,
    close_reason,
    crc16,
    pack_answer,
    pack_class_answer,
    pack_session_frame,
    parse_answer,
    parse_control,
    parse_hello,
    parse_session_frame,
)
from pipeline.wire import (
    BadHeader,
    BadPayload,
    ChecksumMismatch,
    DecompressionError,
    LengthMismatch,
)

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
# RFC 6455: a client's message of up to 125 bytes has a 2-byte header and a 4-byte mask, a
# server's (unmasked) a 2-byte header.
WS_CLIENT_HEADER, WS_SERVER_HEADER = 6, 2


def _route(route_id=0, shape=(1, 8, 2, 2), bits=8, per_channel=False):
    return route_for(route_id, "vgg16-s2-pool4-i3", "pool4", shape, CodecConfig(bits, per_channel))


def _frame(x, route, seq=7, compress=True):
    lz4_used, scale_bits, zero_bits, payload = encode_values(x, route, compress)
    return pack_session_frame(route.id, seq, lz4_used, scale_bits, zero_bits, payload)


def _features(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (np.maximum(rng.standard_normal(shape), 0) * 3).astype(np.float32)


def test_a_frame_costs_its_values_plus_16_bytes_and_an_answer_7_with_websocket_headers():
    route = _route(shape=(1, 1, 4, 4))  # conv4_3 pruned to one filter at 4x4: 16 coded values
    x = _features(route.shape)
    message = _frame(x, route, compress=False)
    assert len(message) - 16 == FRAME_HEADER_BYTES == 10
    assert FRAME_HEADER_BYTES + WS_CLIENT_HEADER <= 16
    answer = pack_answer(Answer(65535, KIND_CLASS, 9))
    assert len(answer) == ANSWER_HEADER_BYTES == 5 and len(answer) + WS_SERVER_HEADER <= 8
    assert parse_answer(answer) == Answer(65535, KIND_CLASS, 9)
    with_logits = parse_answer(pack_answer(Answer(3, KIND_LOGITS, 1, (0.5, 2.0, -1.0))))
    assert with_logits.logits == (0.5, 2.0, -1.0) and with_logits.value == 1
    error = parse_answer(pack_answer(Answer(4, KIND_ERROR, 429, error="slow down " * 50)))
    assert not error.ok and error.value == 429 and len(error.error) == 200


def test_a_session_with_timings_gets_the_edges_work_in_4_more_bytes():
    timed = pack_answer(Answer(7, KIND_CLASS, 2, work_us=1234))
    assert len(timed) == ANSWER_HEADER_BYTES + 4 and timed[2] == KIND_CLASS | KIND_TIMED
    assert parse_answer(timed) == Answer(7, KIND_CLASS, 2, work_us=1234)
    logits = parse_answer(pack_answer(Answer(8, KIND_LOGITS, 0, (1.5, -2.0), work_us=2**40)))
    assert logits.logits == (1.5, -2.0) and logits.work_us == 2**32 - 1  # clamped, not wrapped
    error = pack_answer(Answer(9, KIND_ERROR, 500, error="tail failed", work_us=10))
    assert error[2] == KIND_ERROR and parse_answer(error).work_us is None  # errors carry none
    with pytest.raises(LengthMismatch, match="timed answer"):
        parse_answer(timed[:-1])
    with pytest.raises(BadHeader):
        parse_answer(bytes([0, 0, KIND_ERROR | KIND_TIMED, 0, 0]) + b"\0" * 4)


@given(st.floats(allow_nan=False, allow_infinity=False, width=32, min_value=-(2.0 ** 127),
                 max_value=2.0 ** 127))
def test_bfloat16_parameters_bracket_their_value(value):
    assert bf16_value(bf16_down(value)) <= value <= bf16_value(bf16_up(value))
    assert bf16_value(bf16_up(value)) - bf16_value(bf16_down(value)) <= abs(value) * 2 ** -7 + 1e-38


@pytest.mark.parametrize("bits", [4, 5, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_values_come_back_within_half_a_step(bits, seed):
    route = _route(shape=(1, 6, 3, 3), bits=bits)
    x = _features(route.shape, seed) - 0.7 * seed  # negative minima too
    frame = parse_session_frame(_frame(x, route), {route.id: route})
    y = decode_values(frame)
    scale = bf16_value(frame.scale_bits)
    assert y.shape == route.shape and y.dtype == np.float32
    assert np.abs(x - y).max() <= scale / 2 * (1 + 1e-6)
    assert scale <= (x.max() - x.min()) / ((1 << bits) - 1) * (1 + 2 ** -7) + 2 ** -7 * abs(x.min()) / 255


@settings(max_examples=300, deadline=None, database=None)
@given(st.integers(0, 0x7F7F), st.integers(0, 0xFFFF).filter(lambda b: b & 0x7F80 != 0x7F80),
       st.sampled_from([4, 5, 8]), st.binary(min_size=16, max_size=16))
def test_per_tensor_values_are_the_wire_frames_float64_dequantisation(scale_bits, zero_bits, bits,
                                                                      codes):
    """The session decoder's float32 arithmetic gives the very values of the wire frame's float64
    one, for any finite bfloat16 scale and zero point (huge ones clipped to float32's range)."""
    route = _route(shape=(1, 2, 2, 2), bits=bits)
    body = bytes(codes[:(8 * bits + 7) // 8])
    head = struct.pack("<BBHHH", route.id, 0, 1, scale_bits, zero_bits)
    frame = parse_session_frame(head + struct.pack("<H", crc16(head, body)) + body, {route.id: route})
    try:
        got = decode_values(frame)
    except BadPayload:  # nonzero padding bits of a 5-bit body: refused alike by both
        return
    expected = _dequantise(_unpack(body, 8, bits).reshape(route.shape),
                           np.asarray(bf16_value(scale_bits), np.float32),
                           np.asarray(bf16_value(zero_bits), np.float32))
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert np.array_equal(got, expected)


def test_the_class_answer_is_its_header_and_work_and_parses_back():
    for seq, value, work_us in [(0, 0, None), (65535, 999, 0), (12, 3, 2 ** 40), (7, 2, -5)]:
        fast = pack_class_answer(seq, value, work_us)
        clamped = None if work_us is None else min(max(work_us, 0), 0xFFFFFFFF)
        assert fast == (struct.pack("<HBH", seq, KIND_CLASS, value) if work_us is None else
                        struct.pack("<HBHI", seq, KIND_CLASS | KIND_TIMED, value, clamped))
        assert parse_answer(fast) == Answer(seq, KIND_CLASS, value, work_us=clamped)
    answer = pack_class_answer(5, 6, 7)
    for form in (bytearray(answer), memoryview(answer), memoryview(b"\0" + answer)[1:]):
        assert parse_answer(form) == parse_answer(answer) == Answer(5, KIND_CLASS, 6, work_us=7)
    with pytest.raises(LengthMismatch):  # a 2-D view is read as its bytes, not its rows
        parse_answer(memoryview(answer + b"\0").cast("B", (2, 5)))
    timed_logits = bytearray(pack_class_answer(1, 2, 3))
    timed_logits[2] = KIND_LOGITS | KIND_TIMED  # a timed logits answer of 9 bytes has no logits
    with pytest.raises(LengthMismatch):
        parse_answer(bytes(timed_logits))


def test_per_channel_float32_and_constant_maps_round_trip():
    for route, x in [(_route(shape=(1, 4, 2, 2), per_channel=True), _features((1, 4, 2, 2))),
                     (_route(shape=(1, 10), bits=32), _features((1, 10))),
                     (_route(shape=(1, 3, 2, 2)), np.full((1, 3, 2, 2), 1.2345, np.float32)),
                     (_route(shape=(1, 3, 2, 2)), np.zeros((1, 3, 2, 2), np.float32))]:
        y = decode_values(parse_session_frame(_frame(x, route), {route.id: route}))
        tolerance = 0.0 if route.bits == 32 else (x.max() - x.min()) / 255 + 0.01
        np.testing.assert_allclose(y, x, atol=tolerance)


def test_a_map_of_the_wrong_shape_is_refused_by_the_encoder():
    with pytest.raises(ValueError, match="route 0"):
        encode_values(np.zeros((1, 8, 4, 4), np.float32), _route())


def test_each_fault_has_its_error_class():
    route = _route(route_id=2)
    routes = {2: route}
    good = _frame(_features(route.shape), route)
    with pytest.raises(LengthMismatch, match="shorter"):
        parse_session_frame(good[:9], routes)
    with pytest.raises(UnknownRouteId, match="route id 5"):
        parse_session_frame(bytes([5]) + good[1:], routes)
    with pytest.raises(BadHeader, match="reserved"):
        parse_session_frame(good[:1] + bytes([0x82]) + good[2:], routes)
    with pytest.raises(ChecksumMismatch):
        parse_session_frame(good[:-1] + bytes([good[-1] ^ 1]), routes)

    def forged(flags, scale_bits, zero_bits, payload, r=route):
        head = struct.pack("<BBHHH", r.id, flags, 1, scale_bits, zero_bits)
        return head + struct.pack("<H", crc16(head, payload)) + payload

    with pytest.raises(LengthMismatch, match="allows"):
        parse_session_frame(forged(0, 0x3F80, 0, bytes(route.max_payload_bytes + 1)), routes)
    with pytest.raises(LengthMismatch, match="needs 32"):
        decode_values(parse_session_frame(forged(0, 0x3F80, 0, bytes(31)), routes))
    with pytest.raises(DecompressionError):
        decode_values(parse_session_frame(forged(1, 0x3F80, 0, b"\xff" * 12), routes))
    bomb = lz4.block.compress(bytes(64), store_size=False)  # expands past the route's 32 bytes
    with pytest.raises(DecompressionError):
        decode_values(parse_session_frame(forged(1, 0x3F80, 0, bomb), routes))
    with pytest.raises(BadHeader, match="finite"):
        decode_values(parse_session_frame(forged(0, 0x7FC0, 0, bytes(32)), routes))  # NaN scale
    odd = _route(route_id=2, shape=(1, 3), bits=4)
    with pytest.raises(BadPayload, match="padding"):
        decode_values(parse_session_frame(forged(0, 0x3F80, 0, b"\x12\x3f", odd), {2: odd}))
    per_channel = _route(route_id=2, per_channel=True)
    with pytest.raises(BadHeader, match="must be 0"):
        parse_session_frame(forged(0, 0x3F80, 0, bytes(8)), {2: per_channel})
    with pytest.raises(BadPayload, match="per-channel"):
        bad_params = np.full(16, np.inf, "<f4").tobytes() + bytes(32)
        decode_values(parse_session_frame(forged(0, 0, 0, bad_params, per_channel), {2: per_channel}))


def _hello(**changes) -> str:
    document = {"protocol": "twostep-stream", "version": 1, "link": "phone-7",
                "routes": [{"variant": "vgg16-base", "split": "pool4"}]}
    document.update(changes)
    return json.dumps(document)


def test_the_hello_is_checked_field_by_field():
    hello = parse_hello(_hello(logits=True, series="ab" * 8))
    assert hello == Hello("phone-7", (RouteDecl("vgg16-base", "pool4"),), True, "ab" * 8)
    assert parse_hello(hello.to_json()) == hello
    timed = Hello("phone-7", (RouteDecl("vgg16-base", "pool4"),), timings=True)
    assert parse_hello(timed.to_json()).timings and not hello.timings
    bad = {
        "not JSON": "{routes",
        "must be a JSON object": "[1]",
        "protocol must be": _hello(protocol="http"),
        "version 2 is not supported": _hello(version=2),
        "unknown hello field": _hello(extra=1),
        "link must match": _hello(link="a b"),
        "logits must be": _hello(logits="yes"),
        "timings must be": _hello(timings=1),
        "series must be": _hello(series="zz"),
        "routes must be a non-empty list": _hello(routes=[]),
        "variant must match": _hello(routes=[{"variant": "../x", "split": "pool4"}]),
        "split must match": _hello(routes=[{"variant": "v", "split": 3}]),
        "a route is": _hello(routes=[{"variant": "v"}]),
        "at most 255 routes": _hello(routes=[{"variant": "v", "split": "s"}] * (MAX_ROUTES + 1)),
    }
    for message, text in bad.items():
        with pytest.raises(BadHello, match=message):
            parse_hello(text)
    with pytest.raises(MessageTooBig):
        parse_hello(" " * 33000)
    with pytest.raises(Unsupported):
        parse_hello(b"\x00\x01")
    with pytest.raises(BadHello, match="not JSON"):
        parse_hello("[" * 5000)  # deep nesting is an error, not a crash


def test_control_messages():
    assert parse_control('{"type": "uplink", "uplink_bps": 1.5e6}')["uplink_bps"] == 1.5e6
    assert parse_control('{"type": "routes", "routes": []}')["type"] == "routes"
    for text in ('{"type": "uplink", "uplink_bps": -1}', '{"type": "uplink", "uplink_bps": true}'):
        with pytest.raises(BadHello, match="uplink_bps"):
            parse_control(text)
    assert parse_control('{"type": "probe", "pad": "...."}')["pad"] == "...."
    with pytest.raises(BadHello, match="pad"):
        parse_control('{"type": "probe", "pad": 7}')
    with pytest.raises(Unsupported, match="control message"):
        parse_control('{"type": "shutdown"}')
    with pytest.raises(Unsupported, match="control message"):
        parse_control('{"type": "probe", "pad": "", "more": 1}')


def test_close_reasons_fit_a_close_frame():
    reason = close_reason(BadHello("é" * 200))
    assert len(reason.encode()) <= 123 and reason.startswith("BadHello: ")


ROUTES = {0: _route(0, (1, 8, 2, 2)), 1: _route(1, (1, 3, 5), bits=4),
          2: _route(2, (1, 4, 2, 2), per_channel=True), 3: _route(3, (1, 6), bits=32)}
BASES = [_frame(_features(r.shape, i), r, seq=i, compress=i % 2 == 0) for i, r in ROUTES.items()]


def _decodes_or_frame_error(message: bytes) -> None:
    tracemalloc.start()
    try:
        out = decode_values(parse_session_frame(message, ROUTES))
    except FrameError:
        out = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 1 << 16
    if out is not None:
        assert out.dtype == np.float32 and math.prod(out.shape) <= 64


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(message):
    _decodes_or_frame_error(message)


@FUZZ
@given(st.sampled_from(BASES), st.lists(st.tuples(st.integers(0, 199), st.integers(0, 255)),
                                        max_size=4),
       st.integers(0, 200), st.booleans())
def test_fuzz_mutated_frames_with_the_crc_repaired(base, flips, cut, repair):
    message = bytearray(base[:max(cut, 1)] if cut < len(base) else base)
    for offset, value in flips:
        if offset < len(message) and offset not in (8, 9):
            message[offset] = value
    if repair and len(message) >= FRAME_HEADER_BYTES:
        message[8:10] = struct.pack("<H", crc16(bytes(message[:8]), bytes(message[10:])))
    _decodes_or_frame_error(bytes(message))


@FUZZ
@given(st.binary(max_size=120))
def test_fuzz_answers(message):
    try:
        answer = parse_answer(message, max_classes=64)
    except FrameError:
        return
    assert answer.kind in (KIND_CLASS, KIND_LOGITS, KIND_ERROR) and len(answer.logits) <= 64
    assert answer.work_us is None or answer.kind != KIND_ERROR


@FUZZ
@given(st.text(max_size=300) | st.binary(max_size=100))
def test_fuzz_hellos(text):
    try:
        parse_hello(text)
    except (BadHello, MessageTooBig, Unsupported):
        pass
