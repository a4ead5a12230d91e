"""Tests for the feature codec and wire frame: round trips, error bound, layout, every error."""

import hashlib
import struct
import zlib

import lz4.block
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline.codec import (
    HEADER_BYTES,
    BadHeader,
    BadMagic,
    BadPayload,
    ChecksumMismatch,
    CodecConfig,
    DecompressionError,
    FrameError,
    LengthMismatch,
    ShapeTooLarge,
    UnsupportedVersion,
    VariantMismatch,
    decode_frame,
    encode_frame,
    encoded_size,
    variant_tag,
)

# The documented layout (docs/wire-format.md), written out independently of pipeline.wire.
LAYOUT = struct.Struct("<2sBBBBB4HffII")
CRC_OFFSET = LAYOUT.size
QUANT_BITS = (4, 5, 6, 7, 8)
ALL_BITS = (*QUANT_BITS, 32)
SHAPES = [
    (1, 1, 1, 1),
    (1, 3, 32, 32),
    (1, 64, 16, 16),
    (1, 512, 2, 2),
    (1, 512, 1, 1),
    (1, 7, 3, 5),
    (2, 8, 4, 4),
    (1, 10),
]
FAST = settings(max_examples=200, deadline=None, database=None)


def relu_like(shape, seed=0, sparsity=0.5):
    """Sparse non-negative float32 values, like a feature map after ReLU."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32) * 2.0
    x[rng.random(shape) < sparsity] = 0.0
    return np.maximum(x, 0.0)


def expected_half_step(x, bits, per_channel):
    """scale/2 from the data, computed independently of the codec (float64)."""
    levels = (1 << bits) - 1
    xd = x.astype(np.float64)
    if per_channel:
        axes = tuple(i for i in range(x.ndim) if i != 1)
        span = xd.max(axis=axes, keepdims=True) - xd.min(axis=axes, keepdims=True)
    else:
        span = xd.max() - xd.min()
    return span / levels / 2


SUBNORMAL_STEP = 2.0**-149  # float32's spacing below its smallest normal number


def float_eps(x, bits):
    """The cost of float32 rounding: two ulps of the largest magnitude, plus, for data so small
    that the scale is subnormal (absolute spacing 2^-149), up to `levels` such steps of the scale
    and two of the result."""
    if not x.size:
        return 0.0
    return float(np.abs(x).max()) * 2.0**-22 + ((1 << bits) + 1) * SUBNORMAL_STEP


def assert_within_bound(x, y, bits, per_channel):
    half = expected_half_step(x, bits, per_channel)
    eps = float_eps(x, bits)
    err = np.abs(x.astype(np.float64) - y.astype(np.float64))
    assert (err <= half * (1 + 1e-6) + eps).all()


def build_frame(
    payload=b"",
    *,
    magic=b"TS",
    version=1,
    codec=0,
    bits=8,
    flags=0,
    shape=(1, 4),
    scale=1.0,
    zero_point=0.0,
    tag=0,
    length=None,
    crc=None,
):
    """Write a frame field by field from the documented layout, with a correct CRC by default."""
    dims = (*shape, *(0,) * (4 - len(shape)))[:4]
    length = len(payload) if length is None else length
    prefix = LAYOUT.pack(
        magic, version, codec, bits, flags, len(shape), *dims, scale, zero_point, tag, length
    )
    crc = zlib.crc32(prefix + payload) if crc is None else crc
    return prefix + struct.pack("<I", crc) + payload


def refresh(frame):
    """Recompute the payload length and CRC of a (mutated) frame whose header is intact."""
    fields = list(LAYOUT.unpack_from(frame))
    payload = frame[HEADER_BYTES:]
    fields[-1] = len(payload)
    prefix = LAYOUT.pack(*fields)
    return prefix + struct.pack("<I", zlib.crc32(prefix + payload)) + payload


def reference_pack(codes, bits):
    bitstring = "".join(format(int(v), f"0{bits}b") for v in codes)
    bitstring += "0" * (-len(bitstring) % 8)
    return bytes(int(bitstring[i : i + 8], 2) for i in range(0, len(bitstring), 8))


# --- layout -----------------------------------------------------------------------------------


def test_header_is_35_bytes_and_matches_documented_layout():
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2)
    tag = variant_tag("vgg16-spool4-i3")
    frame = encode_frame(x, CodecConfig(bits=8, compress=False), variant_tag=tag)
    assert HEADER_BYTES == 35 == LAYOUT.size + 4
    magic, version, codec, bits, flags, ndim, *dims, scale, zp, got_tag, length = LAYOUT.unpack_from(frame)
    assert (magic, version, codec, bits, flags, ndim) == (b"TS", 1, 0, 8, 0, 4)
    assert dims == [1, 3, 2, 2]
    assert scale == pytest.approx(11 / 255) and zp == 0.0
    assert got_tag == tag and length == len(frame) - HEADER_BYTES == 12
    (crc,) = struct.unpack_from("<I", frame, CRC_OFFSET)
    assert crc == zlib.crc32(frame[:CRC_OFFSET] + frame[HEADER_BYTES:])


@pytest.mark.parametrize("bits", QUANT_BITS)
def test_values_are_packed_msb_first_with_zero_padding(bits):
    codes = np.arange(1 << bits)[::-1][:13]
    x = codes.astype(np.float32).reshape(1, -1)
    x[0, -1] = 0.0
    x[0, 0] = (1 << bits) - 1
    frame = encode_frame(x, CodecConfig(bits=bits, compress=False))
    assert frame[HEADER_BYTES:] == reference_pack(x.ravel(), bits)


def test_variant_tag_is_sha256_prefix_big_endian():
    digest = hashlib.sha256(b"vgg16-sconv4_3-i7").digest()
    assert variant_tag("vgg16-sconv4_3-i7") == int.from_bytes(digest[:4], "big")
    assert 0 <= variant_tag("") <= 0xFFFFFFFF


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("bits", QUANT_BITS)
@pytest.mark.parametrize("per_channel", [False, True])
def test_quantised_round_trip_within_half_step(shape, bits, per_channel):
    x = relu_like(shape, seed=bits)
    frame = encode_frame(x, CodecConfig(bits=bits, per_channel=per_channel), variant_tag=7)
    out = decode_frame(frame)
    assert out.tensor.dtype == np.float32 and out.tensor.shape == shape
    assert out.bits == bits and out.variant_tag == 7
    assert len(frame) == out.header_bytes + out.payload_bytes
    assert out.header_bytes == HEADER_BYTES
    assert_within_bound(x, out.tensor, bits, per_channel)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("compress", [False, True])
def test_float32_mode_is_exact(shape, compress):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    out = decode_frame(encode_frame(x, CodecConfig(bits=32, compress=compress)))
    assert out.bits == 32 and np.array_equal(out.tensor, x)


@FAST
@given(
    x=hnp.arrays(
        np.float32,
        st.tuples(st.just(1), st.integers(1, 6), st.integers(1, 5), st.integers(1, 5)),
        elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
    ),
    bits=st.sampled_from(QUANT_BITS),
    per_channel=st.booleans(),
)
def test_error_bound_property(x, bits, per_channel):
    out = decode_frame(encode_frame(x, CodecConfig(bits=bits, per_channel=per_channel)))
    assert_within_bound(x, out.tensor, bits, per_channel)
    # The same bound against the scale the frame carries.
    scale = out.scale.reshape((1, -1, 1, 1)) if per_channel else out.scale
    err = np.abs(x.astype(np.float64) - out.tensor)
    assert (err <= scale.astype(np.float64) / 2 + float_eps(x, bits)).all()


@settings(max_examples=15, deadline=None, database=None)
@given(
    c=st.integers(1, 512),
    h=st.integers(1, 32),
    w=st.integers(1, 32),
    bits=st.sampled_from(ALL_BITS),
)
def test_round_trip_feature_map_shapes(c, h, w, bits):
    x = relu_like((1, c, h, w), seed=c)
    out = decode_frame(encode_frame(x, CodecConfig(bits=bits)))
    if bits == 32:
        assert np.array_equal(out.tensor, x)
    else:
        assert_within_bound(x, out.tensor, bits, per_channel=False)


@pytest.mark.parametrize("bits", ALL_BITS)
def test_largest_feature_map_round_trip(bits):
    x = relu_like((1, 512, 32, 32), seed=bits)
    out = decode_frame(encode_frame(x, CodecConfig(bits=bits)))
    if bits == 32:
        assert np.array_equal(out.tensor, x)
    else:
        assert_within_bound(x, out.tensor, bits, per_channel=False)


@pytest.mark.parametrize("bits", QUANT_BITS)
@pytest.mark.parametrize("per_channel", [False, True])
def test_constant_tensor_round_trips_exactly(bits, per_channel):
    x = np.full((1, 4, 3, 3), -2.5, np.float32)
    out = decode_frame(encode_frame(x, CodecConfig(bits=bits, per_channel=per_channel)))
    assert np.array_equal(out.tensor, x) and not out.scale.any()


def test_constant_channels_among_varying_ones():
    x = relu_like((1, 4, 5, 5))
    x[0, 1] = 3.0
    x[0, 2] = 0.0
    out = decode_frame(encode_frame(x, CodecConfig(bits=4, per_channel=True)))
    assert np.array_equal(out.tensor[0, 1:3], x[0, 1:3])
    assert_within_bound(x, out.tensor, 4, per_channel=True)


@pytest.mark.parametrize("shape", [(0, 3, 2, 2), (1, 0), (1, 0, 4, 4), (0,)], ids=str)
@pytest.mark.parametrize("bits", [4, 8, 32])
def test_zero_size_tensors(shape, bits):
    per_channel = bits != 32 and len(shape) > 1
    frame = encode_frame(np.zeros(shape, np.float32), CodecConfig(bits, per_channel))
    out = decode_frame(frame)
    assert out.tensor.shape == shape and out.tensor.dtype == np.float32


def test_torch_tensor_input_matches_numpy():
    torch = pytest.importorskip("torch")
    x = relu_like((1, 8, 4, 4))
    assert encode_frame(torch.from_numpy(x)) == encode_frame(x)
    assert encode_frame(torch.from_numpy(x).to(torch.float16)) == encode_frame(x.astype(np.float16))


def test_integer_and_float64_input_are_accepted():
    x = np.arange(20).reshape(1, 20)
    assert np.array_equal(decode_frame(encode_frame(x, CodecConfig(bits=32))).tensor, x)
    y = decode_frame(encode_frame(x.astype(np.float64), CodecConfig(bits=8))).tensor
    assert np.allclose(y, x, atol=19 / 255 / 2 + 1e-5)


def test_decode_accepts_bytearray_and_memoryview():
    frame = encode_frame(relu_like((1, 2, 3, 3)))
    ref = decode_frame(frame).tensor
    assert np.array_equal(decode_frame(bytearray(frame)).tensor, ref)
    assert np.array_equal(decode_frame(memoryview(frame)).tensor, ref)


# --- sizes and compression --------------------------------------------------------------------


def test_fewer_bits_give_fewer_bytes():
    x = np.random.default_rng(2).random((1, 16, 8, 8)).astype(np.float32)
    sizes = [encoded_size(x, CodecConfig(bits=b, compress=False)) for b in ALL_BITS]
    assert sizes == [HEADER_BYTES + (x.size * b + 7) // 8 for b in ALL_BITS]
    assert sizes == sorted(sizes)


def test_compression_used_when_it_shrinks_and_skipped_otherwise():
    sparse = relu_like((1, 32, 16, 16), sparsity=0.9)
    frame = encode_frame(sparse)
    assert frame[3] == 1 and len(frame) < HEADER_BYTES + sparse.size
    noise = np.random.default_rng(3).random((1, 32, 16, 16)).astype(np.float32)
    frame = encode_frame(noise)
    assert frame[3] == 0 and len(frame) == HEADER_BYTES + noise.size
    assert encode_frame(sparse, CodecConfig(compress=False))[3] == 0


# --- encoder and config validation ------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, 3, 9, 11, 16, 64, True, 8.0])
def test_config_rejects_bad_bits(bad):
    with pytest.raises(ValueError, match=r"bits=.*valid values are \(4, 5, 6, 7, 8, 32\)"):
        CodecConfig(bits=bad)


def test_config_rejects_bad_flags():
    with pytest.raises(ValueError, match="per_channel=1"):
        CodecConfig(per_channel=1)
    with pytest.raises(ValueError, match="compress='yes'"):
        CodecConfig(compress="yes")
    with pytest.raises(ValueError, match="per_channel=True needs quantisation"):
        CodecConfig(bits=32, per_channel=True)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_encode_rejects_non_finite(value):
    x = relu_like((1, 2, 2, 2))
    x[0, 1, 1, 0] = value
    with pytest.raises(ValueError, match="NaN or inf"):
        encode_frame(x)


def test_encode_rejects_float64_beyond_float32_range():
    with pytest.raises(ValueError, match="NaN or inf"):
        encode_frame(np.array([[1e300, 0.0]]))


@pytest.mark.parametrize(
    ("x", "config", "match"),
    [
        (np.float32(1.0), CodecConfig(), "0 dims"),
        (np.zeros((1, 1, 1, 1, 1), np.float32), CodecConfig(), "5 dims"),
        (np.zeros((1, 65536), np.float32), CodecConfig(), "above 65535"),
        (np.zeros(4, np.float32), CodecConfig(per_channel=True), "channel axis"),
        (np.zeros((1, 2), bool), CodecConfig(), "dtype bool"),
        (np.zeros((1, 2), complex), CodecConfig(), "dtype complex"),
    ],
)
def test_encode_rejects_bad_tensors(x, config, match):
    with pytest.raises(ValueError, match=match):
        encode_frame(x, config)


@pytest.mark.parametrize("tag", [-1, 1 << 32, True, 1.5, "7"])
def test_encode_rejects_bad_tag(tag):
    with pytest.raises(ValueError, match="variant_tag"):
        encode_frame(relu_like((1, 4)), variant_tag=tag)


# --- decoder error paths ----------------------------------------------------------------------

GOOD = build_frame(bytes([0, 1, 2, 3]))
PER_CHANNEL = encode_frame(relu_like((1, 3, 2, 2)), CodecConfig(bits=8, per_channel=True))


def lz4_frame(body, shape, bits=8):
    return build_frame(lz4.block.compress(body, store_size=False), codec=1, bits=bits, shape=shape)


def test_constructed_good_frame_decodes():
    assert np.array_equal(decode_frame(GOOD).tensor, [[0, 1, 2, 3]])


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        pytest.param(b"", LengthMismatch, id="empty"),
        pytest.param(b"T", LengthMismatch, id="one-byte"),
        pytest.param(b"XS" + GOOD[2:], BadMagic, id="bad-magic"),
        pytest.param(b"\x00" * 40, BadMagic, id="zeros"),
        pytest.param(build_frame(bytes(4), version=2), UnsupportedVersion, id="version-2"),
        pytest.param(build_frame(bytes(4), version=0), UnsupportedVersion, id="version-0"),
        pytest.param(GOOD[:20], LengthMismatch, id="short-header"),
        pytest.param(GOOD[:-1], LengthMismatch, id="truncated"),
        pytest.param(GOOD + b"\x00", LengthMismatch, id="extra-byte"),
        pytest.param(build_frame(bytes(4), length=5), LengthMismatch, id="length-field"),
        pytest.param(build_frame(bytes(3)), LengthMismatch, id="raw-short"),
        pytest.param(build_frame(bytes(5)), LengthMismatch, id="raw-long"),
        pytest.param(refresh(PER_CHANNEL[: HEADER_BYTES + 20]), LengthMismatch, id="pc-params-short"),
        pytest.param(GOOD[:-1] + b"\x09", ChecksumMismatch, id="crc-payload"),
        pytest.param(build_frame(bytes(4), crc=0), ChecksumMismatch, id="crc-zero"),
        pytest.param(GOOD[:10] + b"\x05" + GOOD[11:], ChecksumMismatch, id="crc-header"),
        pytest.param(build_frame(bytes(4), codec=2), BadHeader, id="codec-2"),
        pytest.param(build_frame(bytes(4), bits=11), BadHeader, id="bits-11"),
        pytest.param(build_frame(bytes(4), bits=3), BadHeader, id="bits-3"),
        pytest.param(build_frame(bytes(4), bits=0), BadHeader, id="bits-0"),
        pytest.param(build_frame(bytes(4), flags=0x80), BadHeader, id="flags-reserved"),
        pytest.param(build_frame(bytes(4), shape=()), BadHeader, id="ndim-0"),
        pytest.param(build_frame(bytes(4), shape=(1, 4, 1, 1, 1)), BadHeader, id="ndim-5"),
        pytest.param(build_frame(bytes(4), scale=float("nan")), BadHeader, id="scale-nan"),
        pytest.param(build_frame(bytes(4), scale=float("inf")), BadHeader, id="scale-inf"),
        pytest.param(build_frame(bytes(4), scale=-1.0), BadHeader, id="scale-neg"),
        pytest.param(build_frame(bytes(4), zero_point=float("-inf")), BadHeader, id="zp-inf"),
        pytest.param(build_frame(bytes(16), bits=32, scale=1.0), BadHeader, id="f32-scale"),
        pytest.param(build_frame(bytes(32), bits=32, flags=1, scale=0.0), BadHeader, id="f32-per-channel"),
        pytest.param(build_frame(bytes(36), shape=(4,), flags=1, scale=0.0), BadHeader, id="pc-ndim-1"),
        pytest.param(
            build_frame(bytes(28), shape=(1, 4), flags=1, scale=0.5),
            BadHeader,
            id="pc-header-scale",
        ),
        pytest.param(build_frame(b"", shape=(65535, 65535, 65535, 65535)), ShapeTooLarge, id="huge-shape"),
    ],
)
def test_decoder_errors(frame, error):
    with pytest.raises(error):
        decode_frame(frame)


def test_unused_shape_slots_must_be_zero():
    fields = list(LAYOUT.unpack_from(GOOD))
    fields[8] = 3  # third dim of a 2-D shape
    prefix = LAYOUT.pack(*fields)
    frame = prefix + struct.pack("<I", zlib.crc32(prefix + GOOD[HEADER_BYTES:])) + GOOD[35:]
    with pytest.raises(BadHeader, match="unused shape slots"):
        decode_frame(frame)


def test_shape_bound_is_max_elements():
    frame = build_frame(bytes(64), shape=(1, 64))
    assert decode_frame(frame, max_elements=64).tensor.size == 64
    with pytest.raises(ShapeTooLarge, match="max_elements=63"):
        decode_frame(frame, max_elements=63)
    with pytest.raises(ValueError, match="max_elements"):
        decode_frame(frame, max_elements=-1)


def test_variant_mismatch():
    tag = variant_tag("vgg16-spool5-i2")
    frame = encode_frame(relu_like((1, 4)), variant_tag=tag)
    assert decode_frame(frame, expected_tag=tag).variant_tag == tag
    with pytest.raises(VariantMismatch):
        decode_frame(frame, expected_tag=variant_tag("vgg16-spool5-i3"))


def test_decompression_bomb_is_refused():
    bomb = lz4_frame(bytes(1 << 22), shape=(1, 16))
    assert len(bomb) < 20_000
    with pytest.raises(DecompressionError):
        decode_frame(bomb)


@pytest.mark.parametrize(
    "frame",
    [
        lz4_frame(bytes(8), shape=(1, 16)),
        build_frame(b"\xff" * 12, codec=1, shape=(1, 16)),
        build_frame(b"", codec=1, shape=(1, 16)),
        build_frame(lz4.block.compress(bytes(64), store_size=False)[:-2], codec=1, shape=(1, 64)),
    ],
    ids=["short", "garbage", "empty", "truncated"],
)
def test_corrupt_or_short_lz4_is_refused(frame):
    with pytest.raises(DecompressionError):
        decode_frame(frame)


def test_lz4_body_of_exact_size_decodes():
    out = decode_frame(lz4_frame(bytes(range(16)), shape=(1, 16)))
    assert np.array_equal(out.tensor, np.arange(16, dtype=np.float32).reshape(1, 16))


@pytest.mark.parametrize(
    "frame",
    [
        build_frame(b"\x12\x3f", bits=4, shape=(1, 3)),
        build_frame(b"\x00\x01", bits=5, shape=(1, 2)),
        build_frame(b"\x00\x00\xc0\x7f", bits=32, scale=0.0, shape=(1, 1)),
        build_frame(b"\x00\x00\x80\x7f", bits=32, scale=0.0, shape=(1, 1)),
        build_frame(struct.pack("<ff", float("nan"), 0.0) + b"\x00", flags=1, scale=0.0, shape=(1, 1)),
        build_frame(struct.pack("<ff", -1.0, 0.0) + b"\x00", flags=1, scale=0.0, shape=(1, 1)),
        build_frame(struct.pack("<ff", 1.0, np.inf) + b"\x00", flags=1, scale=0.0, shape=(1, 1)),
    ],
    ids=["4bit-pad", "5bit-pad", "f32-nan", "f32-inf", "pc-nan", "pc-neg", "pc-inf"],
)
def test_bad_payload_values(frame):
    with pytest.raises(BadPayload):
        decode_frame(frame)


def test_huge_scale_does_not_overflow_to_inf():
    frame = build_frame(b"\xff", shape=(1, 1), scale=3e38, zero_point=3e38)
    assert np.isfinite(decode_frame(frame).tensor).all()


def test_every_error_is_a_value_error():
    for error in (
        BadMagic,
        UnsupportedVersion,
        BadHeader,
        ShapeTooLarge,
        LengthMismatch,
        ChecksumMismatch,
        DecompressionError,
        VariantMismatch,
        BadPayload,
    ):
        assert issubclass(error, FrameError) and issubclass(error, ValueError)


def test_error_bound_holds_for_subnormal_data():
    # found by hypothesis: a range so small that the scale is a subnormal float32
    x = np.array([[[[2.94e-43, 0.0]]]], dtype=np.float32)
    for bits in QUANT_BITS:
        out = decode_frame(encode_frame(x, CodecConfig(bits=bits)))
        assert_within_bound(x, out.tensor, bits, per_channel=False)
        assert np.abs(out.tensor.astype(np.float64) - x).max() < 1e-43  # still close, absolutely
