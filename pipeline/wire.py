"""Byte layout of the twostep wire frame: the header, its checksum and its errors.

A frame is a fixed 35-byte little-endian header followed by a payload. This module packs and
parses the header and checks everything that can be checked without looking inside the
payload: magic, version, field values, the shape bound, the payload length and the CRC-32.
The payload itself (quantisation parameters, packed values, lz4) is `pipeline.codec`'s
business. The layout is documented in `docs/wire-format.md`; keep the two in step.
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib
from dataclasses import dataclass

MAGIC = b"TS"
VERSION = 1
CODEC_RAW = 0
CODEC_LZ4 = 1
CODECS = (CODEC_RAW, CODEC_LZ4)
QUANT_BITS = (4, 5, 6, 7, 8)
FLOAT_BITS = 32
SUPPORTED_BITS = (*QUANT_BITS, FLOAT_BITS)
FLAG_PER_CHANNEL = 0x01
MAX_NDIM = 4
MAX_DIM = 0xFFFF

# magic, version, codec, bits, flags, ndim, 4 x dim, scale, zero point, tag, payload length
_PREFIX = struct.Struct("<2sBBBBB4HffII")
_CRC = struct.Struct("<I")
HEADER_BYTES = _PREFIX.size + _CRC.size


class FrameError(ValueError):
    """A byte string is not a valid frame; the subclass says why."""


class BadMagic(FrameError):
    """The frame does not start with the magic bytes."""


class UnsupportedVersion(FrameError):
    """The frame's format version is not one this decoder reads."""


class BadHeader(FrameError):
    """A header field holds a value outside its valid set."""


class ShapeTooLarge(FrameError):
    """The declared shape has more elements than the caller allows."""


class LengthMismatch(FrameError):
    """The frame is truncated, has extra bytes, or its payload is too short for its parts."""


class ChecksumMismatch(FrameError):
    """The CRC-32 does not match the header and payload."""


class DecompressionError(FrameError):
    """The lz4 payload is corrupt or does not expand to exactly the declared size."""


class VariantMismatch(FrameError):
    """The frame was produced by a different model variant than the one expected."""


class BadPayload(FrameError):
    """The payload decodes, but to values the encoder never writes (non-finite, bad padding)."""


@dataclass(frozen=True)
class Header:
    """The parsed, validated fields of a frame header.

    Attributes:
        codec: `CODEC_RAW` or `CODEC_LZ4`; applies to the value body, not the parameter block.
        bits: bits per value: 4..8 for affine-quantised values, 32 for raw float32.
        per_channel: whether one scale and zero point per channel lead the payload.
        shape: the tensor shape, batch dimension included.
        scale: per-tensor scale (0.0 when per-channel or float32).
        zero_point: per-tensor zero point, the value that code 0 stands for.
        variant_tag: `variant_tag()` of the variant that produced the frame.
        payload_bytes: length of the payload that follows the header.
    """

    codec: int
    bits: int
    per_channel: bool
    shape: tuple[int, ...]
    scale: float
    zero_point: float
    variant_tag: int
    payload_bytes: int

    @property
    def num_elements(self) -> int:
        """Number of tensor elements the shape declares."""
        return math.prod(self.shape)


def variant_tag(variant_id: str) -> int:
    """Return the 32-bit tag that stands for a variant id on the wire.

    Args:
        variant_id: the variant id, e.g. ``"vgg16-spool4-i3"``.

    Returns:
        The first 4 bytes of the SHA-256 of the UTF-8 id, read big-endian.
    """
    return int.from_bytes(hashlib.sha256(variant_id.encode("utf-8")).digest()[:4], "big")


def pack_frame(header: Header, payload: bytes) -> bytes:
    """Serialise a header and its payload into one frame, checksum included.

    Args:
        header: the fields to write; `payload_bytes` must equal `len(payload)`.
        payload: the payload bytes.

    Returns:
        The frame: header followed by payload.
    """
    assert header.payload_bytes == len(payload)
    assert 1 <= len(header.shape) <= MAX_NDIM
    dims = (*header.shape, *(0,) * (MAX_NDIM - len(header.shape)))
    flags = FLAG_PER_CHANNEL if header.per_channel else 0
    prefix = _PREFIX.pack(
        MAGIC,
        VERSION,
        header.codec,
        header.bits,
        flags,
        len(header.shape),
        *dims,
        header.scale,
        header.zero_point,
        header.variant_tag,
        header.payload_bytes,
    )
    crc = zlib.crc32(payload, zlib.crc32(prefix))
    return b"".join((prefix, _CRC.pack(crc), payload))


def parse_header(frame: bytes, max_elements: int) -> Header:
    """Check a frame's envelope and header fields, and return the header.

    Checks run in this order: magic, version, total length, checksum, field values, shape
    bound. Nothing is allocated from header values.

    Args:
        frame: the whole frame.
        max_elements: the largest element count the caller accepts.

    Returns:
        The validated header.

    Raises:
        FrameError: a subclass naming the first check that failed.
    """
    view = memoryview(frame).cast("B")
    _check_preamble(view)
    fields = _PREFIX.unpack_from(view)
    (crc,) = _CRC.unpack_from(view, _PREFIX.size)
    payload_bytes = fields[-1]
    if len(view) != HEADER_BYTES + payload_bytes:
        raise LengthMismatch(f"frame is {len(view)} bytes, header declares {HEADER_BYTES} + {payload_bytes}")
    actual = zlib.crc32(view[HEADER_BYTES:], zlib.crc32(view[: _PREFIX.size]))
    if actual != crc:
        raise ChecksumMismatch(f"CRC-32 is {actual:#010x}, header says {crc:#010x}")
    header = _header_from_fields(fields)
    if header.num_elements > max_elements:
        raise ShapeTooLarge(
            f"shape {header.shape} has {header.num_elements} elements, limit is max_elements={max_elements}"
        )
    return header


def _check_preamble(view: memoryview) -> None:
    if len(view) >= len(MAGIC) and bytes(view[: len(MAGIC)]) != MAGIC:
        raise BadMagic(f"magic is {bytes(view[: len(MAGIC)])!r}, expected {MAGIC!r}")
    if len(view) > len(MAGIC) and view[len(MAGIC)] != VERSION:
        raise UnsupportedVersion(
            f"format version {view[len(MAGIC)]} is not supported; this decoder reads {VERSION}"
        )
    if len(view) < HEADER_BYTES:
        raise LengthMismatch(f"frame is {len(view)} bytes, shorter than the {HEADER_BYTES}-byte header")


def _header_from_fields(fields: tuple) -> Header:
    _, _, codec, bits, flags, ndim, *dims, scale, zero_point, tag, payload_bytes = fields
    if codec not in CODECS:
        raise BadHeader(f"codec {codec} is unknown; valid codecs are {CODECS}")
    if bits not in SUPPORTED_BITS:
        raise BadHeader(f"bits {bits} is unsupported; valid values are {SUPPORTED_BITS}")
    if flags & ~FLAG_PER_CHANNEL:
        raise BadHeader(f"flags {flags:#04x} set reserved bits; only {FLAG_PER_CHANNEL:#04x} is defined")
    if not 1 <= ndim <= MAX_NDIM:
        raise BadHeader(f"ndim {ndim} is out of range; valid values are 1..{MAX_NDIM}")
    if any(dims[ndim:]):
        raise BadHeader(f"unused shape slots {dims[ndim:]} must be 0")
    per_channel = bool(flags & FLAG_PER_CHANNEL)
    _check_quant_fields(bits, per_channel, ndim, scale, zero_point)
    return Header(
        codec=codec,
        bits=bits,
        per_channel=per_channel,
        shape=tuple(dims[:ndim]),
        scale=scale,
        zero_point=zero_point,
        variant_tag=tag,
        payload_bytes=payload_bytes,
    )


def _check_quant_fields(bits: int, per_channel: bool, ndim: int, scale: float, zero_point: float) -> None:
    if per_channel and bits == FLOAT_BITS:
        raise BadHeader("per-channel flag is set, but bits 32 (float32) has no quantisation")
    if per_channel and ndim < 2:
        raise BadHeader(f"per-channel flag needs a channel axis (ndim >= 2), got ndim {ndim}")
    if bits == FLOAT_BITS or per_channel:
        if scale != 0.0 or zero_point != 0.0:
            raise BadHeader(
                f"scale {scale} and zero point {zero_point} must be 0.0 when per-channel or float32"
            )
        return
    if not (math.isfinite(scale) and scale >= 0.0):
        raise BadHeader(f"scale {scale} must be finite and >= 0")
    if not math.isfinite(zero_point):
        raise BadHeader(f"zero point {zero_point} must be finite")
