"""Fuzz the frame decoder: whatever the bytes, it returns a small tensor or raises a FrameError.

Three sources of input: random bytes, valid frames with bytes flipped/inserted/deleted/cut
(optionally with length and CRC repaired so the mutation reaches the field checks), and headers
written field by field from arbitrary values with a correct CRC. Each decode runs under
tracemalloc with a small `max_elements`, so an allocation sized from a hostile header fails
the test even when it would succeed on this machine.
"""

import math
import struct
import tracemalloc
import zlib

import lz4.block
import numpy as np
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


def assert_decodes_or_frame_error(frame: bytes) -> None:
    tracemalloc.start()
    try:
        out = decode_frame(frame, max_elements=MAX_ELEMENTS)
    except FrameError:
        out = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < MAX_PEAK_BYTES
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


small_dims = st.integers(0, 8) | st.integers(0, 0xFFFF)
any_f32 = st.sampled_from([0.0, -0.0, 1.0, 1e-3]) | st.floats(0, 2.0**100, width=32) | st.floats(width=32)


@st.composite
def frames_from_fields(draw) -> bytes:
    """A frame with mostly-valid header fields, any payload, and a correct length and CRC."""
    ndim = draw(st.sampled_from([1, 2, 3, 4] * 3 + [0, 5]))
    shape = draw(st.lists(small_dims, min_size=min(ndim, 4), max_size=min(ndim, 4)))
    slots = shape + [0] * (4 - len(shape))
    if draw(st.integers(0, 9)) == 0:
        slots[draw(st.integers(0, 3))] = draw(small_dims)
    codec = draw(st.sampled_from([0, 1] * 4 + [2, 255]))
    bits = draw(st.sampled_from([4, 5, 6, 7, 8, 32] * 3 + [0, 3, 9, 255]))
    flags = draw(st.sampled_from([0, 1] * 4 + [2, 0x81]))
    # Mostly the values the decoder accepts: 0.0 where no per-tensor scale applies.
    unused = bits == 32 or flags & 1
    scale = 0.0 if unused and draw(st.integers(0, 4)) else draw(any_f32)
    zero_point = 0.0 if unused and draw(st.integers(0, 4)) else draw(any_f32)
    payload = draw(_payloads(slots[:ndim], bits, flags, codec))
    prefix = LAYOUT.pack(b"TS", 1, codec, bits, flags, ndim, *slots, scale, zero_point, 0, len(payload))
    return prefix + struct.pack("<I", zlib.crc32(prefix + payload)) + payload


def _payloads(shape, bits, flags, codec):
    """Random bytes, or bytes of exactly the size the fields imply (lz4'd for codec 1)."""
    n = math.prod(shape)
    params = 8 * shape[1] if flags & 1 and len(shape) >= 2 else 0
    size = (n * bits + 7) // 8
    if n > MAX_ELEMENTS or params + size > 4096:
        return st.binary(max_size=200)
    sized = st.binary(min_size=size, max_size=size)
    if codec == 1:
        sized = sized.map(lambda body: lz4.block.compress(body, store_size=False))
    head = st.binary(min_size=params, max_size=params)
    return st.binary(max_size=200) | st.tuples(head, sized).map(b"".join)


@FUZZ
@given(frame=frames_from_fields())
def test_arbitrary_header_fields_with_valid_crc(frame):
    assert_decodes_or_frame_error(frame)
