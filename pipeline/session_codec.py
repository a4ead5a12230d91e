"""Values of a session frame: the wire frame's quantisation with 2-byte parameters.

A session frame carries its per-tensor scale and zero point as bfloat16 (the upper half of a
float32), 4 bytes instead of 8. The encoder picks the zero point at or below the minimum and the
scale at or above the step the range needs, both exactly representable in bfloat16, and
quantises with those, so the decoder's values are within scale / 2 of the originals, as with the
wire frame (`pipeline.codec`); the scale is at most 2^-7 (0.8%) coarser. Per-channel parameters
and float32 values are coded as in the wire frame. No Ray and no torch here.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from pipeline.codec import (
    CodecConfig,
    _body_bytes,
    _compress,
    _decode_float32,
    _decompress,
    _dequantise,
    _pack,
    _param_block,
    _quant_params,
    _quantise,
    _to_float32,
    _unpack,
)
from pipeline.session_wire import Route, SessionFrame
from pipeline.wire import FLOAT_BITS, BadHeader, BadPayload, LengthMismatch

_F32 = np.dtype("<f4")
_F32_MAX = float(np.finfo(np.float32).max)


def bf16_value(bits: int) -> float:
    """The float a bfloat16 bit pattern stands for."""
    return struct.unpack("<f", struct.pack("<I", (bits & 0xFFFF) << 16))[0]


def _bf16_bits(value: float, up: bool) -> int:
    """The bfloat16 nearest `value` on its upper (`up`) or lower side."""
    f32 = struct.unpack("<I", struct.pack("<f", value))[0]
    rounded = struct.unpack("<f", struct.pack("<I", f32))[0]
    if (up and rounded < value) or (not up and rounded > value):
        # float32 rounding went the wrong way: one float32 step back past `value`
        f32 += 1 if (value > 0) == up else -1
    bits = f32 >> 16
    truncated = bf16_value(bits)
    if (up and truncated < value) or (not up and truncated > value):
        bits += 1  # truncation moved towards zero, the wrong way: one more step of magnitude
    if not math.isfinite(bf16_value(bits)):
        raise ValueError(f"value {value!r} is beyond the bfloat16 range")
    return bits


def bf16_down(value: float) -> int:
    return _bf16_bits(value, up=False)


def bf16_up(value: float) -> int:
    return _bf16_bits(value, up=True)


def encode_values(x: Any, route: Route, compress: bool = True) -> tuple[bool, int, int, bytes]:
    """(lz4, scale bits, zero-point bits, payload) of a feature map for `route`.

    Raises:
        ValueError: the tensor's shape is not the route's, or it holds NaN/inf.
    """
    arr = _to_float32(x)
    if tuple(arr.shape) != route.shape:
        raise ValueError(f"feature map of shape {tuple(arr.shape)}, route {route.id} "
                         f"({route.variant}@{route.split}) carries {route.shape}")
    scale_bits = zero_bits = 0
    params = b""
    if route.bits == FLOAT_BITS:
        body = arr.astype(_F32, copy=False).tobytes()
    elif route.per_channel:
        scale, zero_point = _quant_params(arr, route.bits, True)
        params = _param_block(scale, zero_point)
        body = _pack(_quantise(arr, scale, zero_point, route.bits), route.bits)
    else:
        levels = (1 << route.bits) - 1
        lo = float(arr.min()) if arr.size else 0.0
        hi = float(arr.max()) if arr.size else 0.0
        zero_bits = bf16_down(lo)
        zero_point = bf16_value(zero_bits)
        step = (hi - zero_point) / levels
        scale_bits = bf16_up(step) if step > 0 else 0
        scale = np.asarray(bf16_value(scale_bits), np.float32)
        body = _pack(_quantise(arr, scale, np.asarray(zero_point, np.float32), route.bits), route.bits)
    lz4, body = _compress(body) if compress else (0, body)
    return bool(lz4), scale_bits, zero_bits, params + body


def max_payload_bytes(shape: tuple[int, ...], bits: int, per_channel: bool) -> int:
    """The largest payload a frame of this shape can need (lz4 is used only when smaller)."""
    params = 8 * shape[1] if per_channel else 0
    return params + _body_bytes(math.prod(shape), bits)


def decode_values(frame: SessionFrame) -> np.ndarray:
    """The float32 tensor of a checked session frame, in its route's shape.

    Raises:
        FrameError: `BadHeader` (non-finite or negative parameters), `LengthMismatch`,
            `DecompressionError`, `BadPayload`.
    """
    route, payload = frame.route, frame.payload
    n = math.prod(route.shape)
    if route.per_channel:
        channels = route.shape[1]
        block = 8 * channels
        if len(payload) < block:
            raise LengthMismatch(f"payload is {len(payload)} bytes; parameters of {channels} "
                                 f"channels need {block}")
        params = np.frombuffer(payload[:block], _F32).astype(np.float32)
        scale, zero_point = params[:channels], params[channels:]
        if not (np.isfinite(params).all() and (scale >= 0).all()):
            raise BadPayload("per-channel scales must be finite and >= 0, zero points finite")
        payload = payload[block:]
    else:
        scale, zero_point = bf16_value(frame.scale_bits), bf16_value(frame.zero_bits)
        if not (math.isfinite(scale) and scale >= 0 and math.isfinite(zero_point)):
            raise BadHeader(f"scale {scale} must be finite and >= 0, zero point {zero_point} finite")
    size = _body_bytes(n, route.bits)
    raw = _decompress(payload, size) if frame.lz4 else payload
    if len(raw) != size:
        raise LengthMismatch(f"values are {len(raw)} bytes, shape {route.shape} at {route.bits} "
                             f"bits needs {size}")
    if route.bits == FLOAT_BITS:
        return _decode_float32(raw, route.shape)
    codes = _unpack(raw, n, route.bits)
    if route.per_channel:
        return _dequantise(codes.reshape(route.shape), scale, zero_point)
    return _dequantise_tensor(codes, scale, zero_point, route.bits).reshape(route.shape)


def _dequantise_tensor(codes: np.ndarray, scale: float, zero_point: float, bits: int) -> np.ndarray:
    """`codes * scale + zero_point` in float32 with per-tensor parameters: the same values as
    `pipeline.codec._dequantise` (a code times a bfloat16 scale is exact in float32, and the sum
    is rounded once either way) with one array made instead of four, which a frame's decode
    time shows. Parameters that could reach past float32's range (only a crafted frame has them)
    take the float64 path, which clips."""
    if scale * ((1 << bits) - 1) + abs(zero_point) >= _F32_MAX:
        return _dequantise(codes, np.asarray(scale, np.float32), np.asarray(zero_point, np.float32))
    x = codes.astype(np.float32)
    x *= np.float32(scale)
    x += np.float32(zero_point)
    return x


def route_for(route_id: int, variant: str, split: str, shape: tuple[int, ...],
              codec: CodecConfig) -> Route:
    """The route a session fixes for a (variant, split) whose frames have `shape` (batch 1)."""
    return Route(route_id, variant, split, tuple(shape), codec.bits, codec.per_channel,
                 max_payload_bytes(tuple(shape), codec.bits, codec.per_channel))
