"""Fuzz the frame decoder: whatever the bytes, it returns a small tensor or raises a FrameError.

Three sources of input: random bytes, valid frames with bytes flipped/inserted/deleted/cut
(optionally with length and CRC repaired so the mutation reaches the field checks), and headers
written field by field from arbitrary values with a correct CRC. Each decode runs under
tracemalloc with a small `max_elements`, so an allocation sized from a hostile header fails
the test even when it would succeed on this machine.
"""

import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.codec import HEADER_BYTES, CodecConfig, FrameError, decode_frame, encode_frame

MAX_ELEMENTS = 4096
MAX_PEAK_BYTES = 1 << 20
LAYOUT = struct.Struct("<2sBBBBB4HffII")
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _feature_map(shape, seed):
    rng = np.random.default_rng(seed)
    return np.maximum(rng.standard_normal(shape), 0).astype(np.float32)


BASES = [
    encode_frame(_feature_map((1, 8, 4, 4), 0), CodecConfig(bits=8)),
    encode_frame(np.zeros((1, 16, 4, 4), np.float32), CodecConfig(bits=8)),
    encode_frame(_feature_map((1, 3, 5, 5), 1), CodecConfig(bits=4, compress=False)),
    encode_frame(_feature_map((1, 4, 3, 3), 2), CodecConfig(bits=5, per_channel=True)),
    encode_frame(_feature_map((1, 10), 3), CodecConfig(bits=32)),
    encode_frame(np.zeros((1, 64), np.float32), CodecConfig(bits=32)),
    encode_frame(_feature_map((0, 3, 2, 2), 4), CodecConfig(bits=7, per_channel=True)),
]


@pytest.fixture(scope="module", autouse=True)
def _trace_allocations():
    tracemalloc.start()
    yield
    tracemalloc.stop()


def assert_decodes_or_frame_error(frame: bytes) -> None:
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    try:
        out = decode_frame(frame, max_elements=MAX_ELEMENTS)
    except FrameError:
        out = None
    _, peak = tracemalloc.get_traced_memory()
    assert peak - base < MAX_PEAK_BYTES
    if out is not None:
        assert out.tensor.dtype == np.float32 and out.tensor.size <= MAX_ELEMENTS
        assert np.isfinite(out.tensor).all()
        assert out.header_bytes + out.payload_bytes == len(frame)


def repair(frame: bytes) -> bytes:
    """Set the payload length and CRC to match, so a mutation reaches the field checks."""
    if len(frame) < HEADER_BYTES:
        return frame
    fields = list(LAYOUT.unpack_from(frame))
    payload = frame[HEADER_BYTES:]
    fields[-1] = len(payload)
    prefix = LAYOUT.pack(*fields)
    return prefix + struct.pack("<I", zlib.crc32(prefix + payload)) + payload


def mutate(frame: bytes, ops) -> bytes:
    data = bytearray(frame)
    for op, pos, value in ops:
        i = pos % (len(data) + 1)
        if op == "flip" and i < len(data):
            data[i] ^= 1 << (value % 8)
        elif op == "set" and i < len(data):
            data[i] = value
        elif op == "insert":
            data[i:i] = bytes([value])
        elif op == "delete" and i < len(data):
            del data[i]
        elif op == "truncate":
            del data[i:]
    return bytes(data)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
        st.integers(0, 1 << 16),
        st.integers(0, 255),
    ),
    min_size=1,
    max_size=4,
)


@FUZZ
@given(data=st.binary(max_size=300), prefix=st.sampled_from([b"", b"TS", b"TS\x01"]))
def test_random_bytes(data, prefix):
    assert_decodes_or_frame_error(prefix + data)
    assert_decodes_or_frame_error(repair(prefix + data))


@FUZZ
@given(base=st.sampled_from(BASES), ops=OPS, fix=st.booleans())
def test_mutated_valid_frames(base, ops, fix):
    frame = mutate(base, ops)
    assert_decodes_or_frame_error(repair(frame) if fix else frame)


small_u8 = st.one_of(st.integers(0, 8), st.sampled_from([32, 255]))
dims = st.one_of(st.integers(0, 70), st.integers(0, 0xFFFF))
f32 = st.floats(width=32) | st.sampled_from([0.0, 1.0, -0.0])


@FUZZ
@given(
    codec=st.integers(0, 3),
    bits=small_u8,
    flags=st.sampled_from([0, 1, 2, 0x81]),
    ndim=st.integers(0, 5),
    shape=st.lists(dims, min_size=4, max_size=4),
    scale=f32,
    zero_point=f32,
    payload=st.binary(max_size=200),
)
def test_arbitrary_header_fields_with_valid_crc(
    codec, bits, flags, ndim, shape, scale, zero_point, payload
):
    prefix = LAYOUT.pack(
        b"TS", 1, codec, bits, flags, ndim, *shape, scale, zero_point, 0, len(payload)
    )
    frame = prefix + struct.pack("<I", zlib.crc32(prefix + payload)) + payload
    assert_decodes_or_frame_error(frame)
