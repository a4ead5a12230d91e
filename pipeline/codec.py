"""Feature codec: quantise a feature map, pack it densely, lz4 it, and frame it for the wire.

`encode_frame` turns a float tensor (numpy or torch, batch dimension first) into the bytes that
travel from the device head to the edge tail; `decode_frame` validates such bytes and gives
the float32 tensor back. Values are affine-quantised to 4..8 bits (one scale and zero point per
tensor or per channel) and packed MSB-first, or sent as raw float32 (bits 32). The packed body
is lz4-compressed in block mode unless that does not make it smaller. Header layout, checksum
and errors live in `pipeline.wire`; `docs/wire-format.md` describes the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lz4.block
import numpy as np

from pipeline.wire import (
    CODEC_LZ4,
    CODEC_RAW,
    FLOAT_BITS,
    HEADER_BYTES,
    MAX_DIM,
    MAX_NDIM,
    QUANT_BITS,
    SUPPORTED_BITS,
    BadHeader,
    BadMagic,
    BadPayload,
    ChecksumMismatch,
    DecompressionError,
    FrameError,
    Header,
    LengthMismatch,
    ShapeTooLarge,
    UnsupportedVersion,
    VariantMismatch,
    pack_frame,
    parse_header,
    variant_tag,
)

__all__ = [
    "HEADER_BYTES",
    "SUPPORTED_BITS",
    "BadHeader",
    "BadMagic",
    "BadPayload",
    "ChecksumMismatch",
    "CodecConfig",
    "DecodedFrame",
    "DecompressionError",
    "FrameError",
    "LengthMismatch",
    "ShapeTooLarge",
    "UnsupportedVersion",
    "VariantMismatch",
    "decode_frame",
    "codec_config",
    "encode_frame",
    "encoded_size",
    "variant_tag",
]

CHANNEL_AXIS = 1
_MAX_TAG = 0xFFFFFFFF
_MAX_PAYLOAD = 0xFFFFFFFF
_F32 = np.dtype("<f4")
_F32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class CodecConfig:
    """How to code a feature map.

    Attributes:
        bits: bits per value: 4..8 quantise affinely, 32 sends raw float32.
        per_channel: one scale and zero point per channel (axis 1) instead of per tensor.
        compress: try lz4 on the packed values (kept only when it shrinks them).
    """

    bits: int = 8
    per_channel: bool = False
    compress: bool = True

    def __post_init__(self) -> None:
        if type(self.bits) is not int or self.bits not in SUPPORTED_BITS:
            raise ValueError(f"bits={self.bits!r} is unsupported; valid values are {SUPPORTED_BITS}")
        for name in ("per_channel", "compress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be True or False")
        if self.per_channel and self.bits == FLOAT_BITS:
            raise ValueError(
                f"per_channel=True needs quantisation; valid bits are {QUANT_BITS}, got bits={FLOAT_BITS}"
            )


def codec_config(codec: dict) -> CodecConfig:
    """The `CodecConfig` of a series manifest's `codec` entry."""
    return CodecConfig(
        bits=int(codec.get("bits", 8)),
        per_channel=bool(codec.get("per_channel", False)),
        compress=bool(codec.get("compress", True)),
    )


@dataclass(frozen=True)
class DecodedFrame:
    """A decoded frame.

    Attributes:
        tensor: the float32 tensor, in the frame's shape.
        variant_tag: the tag of the variant that produced the frame.
        bits: bits per value on the wire (4..8, or 32 for float32).
        header_bytes: size of the header.
        payload_bytes: size of the payload (parameter block plus coded values).
        scale: quantisation step, shape () per tensor or (C,) per channel; 0 for float32.
        zero_point: value of code 0, same shape as `scale`.
    """

    tensor: np.ndarray
    variant_tag: int
    bits: int
    header_bytes: int
    payload_bytes: int
    scale: np.ndarray
    zero_point: np.ndarray


def encode_frame(x: Any, config: CodecConfig = CodecConfig(), variant_tag: int = 0) -> bytes:
    """Encode a feature map into one wire frame.

    Args:
        x: a numpy array or torch tensor of real numbers, 1 to 4 dims, batch dimension first,
            each dim at most 65535.
        config: bits, per-channel and compression settings.
        variant_tag: the sending variant's tag (see `variant_tag()`), 0 if none.

    Returns:
        The frame bytes.

    Raises:
        ValueError: the tensor has NaN/inf, a bad dtype or shape, or the tag is out of range.
    """
    arr = _to_float32(x)
    _check_shape(arr.shape, config)
    if type(variant_tag) is not int or not 0 <= variant_tag <= _MAX_TAG:
        raise ValueError(f"variant_tag={variant_tag!r} must be an int in 0..{_MAX_TAG}")
    if config.bits == FLOAT_BITS:
        scale = zero_point = np.zeros((), np.float32)
        body = arr.astype(_F32, copy=False).tobytes()
    else:
        scale, zero_point = _quant_params(arr, config.bits, config.per_channel)
        body = _pack(_quantise(arr, scale, zero_point, config.bits), config.bits)
    codec, body = _compress(body) if config.compress else (CODEC_RAW, body)
    params = _param_block(scale, zero_point) if config.per_channel else b""
    if len(params) + len(body) > _MAX_PAYLOAD:
        raise ValueError(f"payload of {len(params) + len(body)} bytes exceeds {_MAX_PAYLOAD}")
    header = Header(
        codec=codec,
        bits=config.bits,
        per_channel=config.per_channel,
        shape=arr.shape,
        scale=0.0 if config.per_channel else float(scale),
        zero_point=0.0 if config.per_channel else float(zero_point),
        variant_tag=variant_tag,
        payload_bytes=len(params) + len(body),
    )
    return pack_frame(header, params + body if params else body)


def decode_frame(frame: bytes, max_elements: int = 1 << 24, expected_tag: int | None = None) -> DecodedFrame:
    """Validate a wire frame and decode its tensor.

    Every header field and bound is checked before anything sized from the header is
    allocated; lz4 output is capped at the size the (bounded) shape implies.

    Args:
        frame: the frame bytes (bytes, bytearray or memoryview).
        max_elements: the largest tensor, in elements, to accept.
        expected_tag: if given, the variant tag the frame must carry.

    Returns:
        The decoded tensor with the frame's metadata.

    Raises:
        FrameError: a subclass naming the first check that failed.
        ValueError: `max_elements` is negative.
    """
    if max_elements < 0:
        raise ValueError(f"max_elements={max_elements} must be >= 0")
    header = parse_header(frame, max_elements)
    if expected_tag is not None and header.variant_tag != expected_tag:
        raise VariantMismatch(
            f"frame carries variant tag {header.variant_tag:#010x}, expected {expected_tag:#010x}"
        )
    payload = memoryview(frame).cast("B")[HEADER_BYTES:]
    scale, zero_point, body = _split_payload(header, payload)
    n = header.num_elements
    size = _body_bytes(n, header.bits)
    raw = _decompress(body, size) if header.codec == CODEC_LZ4 else body
    if len(raw) != size:
        raise LengthMismatch(f"raw body is {len(raw)} bytes, shape {header.shape} implies {size}")
    if header.bits == FLOAT_BITS:
        tensor = _decode_float32(raw, header.shape)
    else:
        q = _unpack(raw, n, header.bits).reshape(header.shape)
        tensor = _dequantise(q, scale, zero_point)
    return DecodedFrame(
        tensor=tensor,
        variant_tag=header.variant_tag,
        bits=header.bits,
        header_bytes=HEADER_BYTES,
        payload_bytes=header.payload_bytes,
        scale=scale,
        zero_point=zero_point,
    )


def encoded_size(x: Any, config: CodecConfig = CodecConfig()) -> int:
    """Return the number of bytes `encode_frame(x, config)` produces."""
    return len(encode_frame(x, config))


def _to_float32(x: Any) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().float().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"dtype {arr.dtype} is not supported; use a float or integer tensor")
    with np.errstate(over="ignore"):
        arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError("tensor has NaN or inf values (or values beyond float32 range)")
    return arr


def _check_shape(shape: tuple[int, ...], config: CodecConfig) -> None:
    if not 1 <= len(shape) <= MAX_NDIM:
        raise ValueError(f"shape {shape} has {len(shape)} dims; valid are 1..{MAX_NDIM}")
    if any(d > MAX_DIM for d in shape):
        raise ValueError(f"shape {shape} has a dim above {MAX_DIM}")
    if config.per_channel and len(shape) < 2:
        raise ValueError(f"per_channel=True needs a channel axis (ndim >= 2), got shape {shape}")


def _quant_params(arr: np.ndarray, bits: int, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Return float32 (scale, zero_point), shape () or (C,), that cover each range exactly."""
    if per_channel:
        num_channels = arr.shape[CHANNEL_AXIS]
        per_channel_size = arr.size // num_channels if num_channels else 0
        channels = np.moveaxis(arr, CHANNEL_AXIS, 0).reshape(num_channels, per_channel_size)
        if per_channel_size == 0:
            zeros = np.zeros(num_channels, np.float32)
            return zeros, zeros.copy()
        lo, hi = channels.min(axis=1), channels.max(axis=1)
    elif arr.size == 0:
        return np.zeros((), np.float32), np.zeros((), np.float32)
    else:
        lo, hi = np.asarray(arr.min()), np.asarray(arr.max())
    # Exact in float64; round the float32 scale up so the top code still reaches hi.
    step = (hi.astype(np.float64) - lo) / ((1 << bits) - 1)
    scale = step.astype(np.float32)
    scale = np.where(scale < step, np.nextafter(scale, np.float32(np.inf)), scale)
    return scale.astype(np.float32), lo.astype(np.float32)


def _broadcast(params: np.ndarray, ndim: int) -> np.ndarray:
    """Reshape per-channel (C,) parameters to (1, C, 1, ...) for an ndim-dim tensor."""
    if params.ndim == 0:
        return params
    return params.reshape((1, -1) + (1,) * (ndim - 2))


def _quantise(arr: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, bits: int) -> np.ndarray:
    """Return the flat uint8 codes of `arr`; a zero scale (constant range) gives code 0."""
    step = _broadcast(scale.astype(np.float64), arr.ndim)
    offset = _broadcast(zero_point.astype(np.float64), arr.ndim)
    q = np.rint((arr - offset) / np.where(step > 0, step, 1.0))
    np.clip(q, 0, (1 << bits) - 1, out=q)
    return q.astype(np.uint8).ravel()


def _dequantise(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    step = _broadcast(scale.astype(np.float64), q.ndim)
    offset = _broadcast(zero_point.astype(np.float64), q.ndim)
    x = q * step + offset
    # A crafted frame can put the top code past float32 range; clip rather than emit inf.
    np.clip(x, -_F32_MAX, _F32_MAX, out=x)
    return x.astype(np.float32)


def _body_bytes(num_elements: int, bits: int) -> int:
    return (num_elements * bits + 7) // 8


def _pack(q: np.ndarray, bits: int) -> bytes:
    """Pack uint8 codes of `bits` bits each densely, MSB first, zero-padding the last byte."""
    if bits == 8:
        return q.tobytes()
    if bits == 4:
        pairs = np.zeros(q.size + q.size % 2, np.uint8)
        pairs[: q.size] = q
        return ((pairs[0::2] << 4) | pairs[1::2]).tobytes()
    planes = np.unpackbits(q[:, None], axis=1)[:, 8 - bits :]
    return np.packbits(planes.ravel()).tobytes()


def _unpack(body: bytes | memoryview, num_elements: int, bits: int) -> np.ndarray:
    """Inverse of `_pack`; nonzero padding bits raise `BadPayload`."""
    packed = np.frombuffer(body, np.uint8)
    if bits == 8:
        return packed
    if bits == 4:
        q = np.empty(packed.size * 2, np.uint8)
        q[0::2], q[1::2] = packed >> 4, packed & 0x0F
        padding = q[num_elements:]
    else:
        planes = np.unpackbits(packed)
        used = planes[: num_elements * bits].reshape(num_elements, bits)
        q = np.packbits(used, axis=1).ravel() >> (8 - bits)
        padding = planes[num_elements * bits :]
    if padding.any():
        raise BadPayload("padding bits after the last value are not zero")
    return q[:num_elements]


def _compress(body: bytes) -> tuple[int, bytes]:
    packed = lz4.block.compress(body, store_size=False)
    return (CODEC_LZ4, packed) if len(packed) < len(body) else (CODEC_RAW, body)


def _decompress(body: bytes | memoryview, size: int) -> bytes:
    try:
        raw = lz4.block.decompress(body, uncompressed_size=size)
    except (lz4.block.LZ4BlockError, ValueError, OverflowError) as err:
        raise DecompressionError(f"lz4 body of {len(body)} bytes: {err}") from err
    if len(raw) != size:
        raise DecompressionError(f"lz4 body expands to {len(raw)} bytes, shape implies {size}")
    return raw


def _param_block(scale: np.ndarray, zero_point: np.ndarray) -> bytes:
    return scale.astype(_F32).tobytes() + zero_point.astype(_F32).tobytes()


def _split_payload(header: Header, payload: memoryview) -> tuple[np.ndarray, np.ndarray, memoryview]:
    """Split the payload into (scale, zero_point, coded body), validating the parameters."""
    if not header.per_channel:
        scale = np.asarray(header.scale, np.float32)
        return scale, np.asarray(header.zero_point, np.float32), payload
    channels = header.shape[CHANNEL_AXIS]
    block = 2 * channels * _F32.itemsize
    if len(payload) < block:
        raise LengthMismatch(
            f"payload is {len(payload)} bytes; parameters of {channels} channels need {block}"
        )
    params = np.frombuffer(payload[:block], _F32).astype(np.float32)
    scale, zero_point = params[:channels], params[channels:]
    if not (np.isfinite(params).all() and (scale >= 0).all()):
        raise BadPayload("per-channel scales must be finite and >= 0, zero points finite")
    return scale, zero_point, payload[block:]


def _decode_float32(raw: bytes | memoryview, shape: tuple[int, ...]) -> np.ndarray:
    tensor = np.frombuffer(raw, _F32).astype(np.float32).reshape(shape)
    if not np.isfinite(tensor).all():
        raise BadPayload("float32 payload holds NaN or inf")
    return tensor
