"""Request bodies: size limits, images and raw pixels, with no web framework and no Ray in sight
(query parameters are typed models in `serve/queries.py`).

Everything here raises `HttpError(status, message)` for bad input, which the router turns into
a JSON `{"error": message}` response with that status. Images are PNG or JPEG (Pillow, formats
restricted, the pixel count checked from the header before any pixel is decoded) or raw uint8
bytes with an explicit shape. No pickle, no eval: JSON and raw bytes only.
"""

from __future__ import annotations

import io
import json
import math
import re
import warnings
from collections.abc import AsyncIterator

import numpy as np

MULTIPLEX_HEADER = "serve_multiplexed_model_id"  # Serve routes a request by it to a replica holding the model
IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG"}
RAW_TYPES = ("application/octet-stream", "application/x-uint8")


class HttpError(ValueError):
    """A request the server refuses, with the HTTP status to answer it with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


async def read_body(chunks: AsyncIterator[bytes], content_length: str | None, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds `max_bytes`."""
    if content_length is not None:
        if not content_length.isdigit():
            raise HttpError(400, f"bad Content-Length {content_length[:40]!r}")
        if int(content_length) > max_bytes:
            raise HttpError(413, f"body of {int(content_length)} bytes exceeds the limit of "
                                 f"{max_bytes} bytes")
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise HttpError(413, f"body exceeds the limit of {max_bytes} bytes")
        parts.append(chunk)
    body = b"".join(parts)
    if not body:
        raise HttpError(400, "empty body")
    return body


async def read_json(chunks: AsyncIterator[bytes], content_length: str | None, max_bytes: int) -> object:
    """The request body parsed as JSON (`read_body`'s limits); 400 for anything that is not JSON:
    bad syntax or UTF-8, integers too long to convert, nesting deeper than the parser's stack."""
    body = await read_body(chunks, content_length, max_bytes)
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as err:
        raise HttpError(400, f"body must be JSON: {err}") from None


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def parse_shape(text: str | None) -> tuple[int, ...]:
    if text is None:
        raise HttpError(400, "raw pixels need a shape query parameter, e.g. shape=1,32,32 (C,H,W)")
    if not re.fullmatch(r"[0-9]{1,5}(,[0-9]{1,5}){0,3}", text):
        raise HttpError(400, f"shape must be comma-separated integers like 1,32,32, got {text[:40]!r}")
    return tuple(int(d) for d in text.split(","))


def decode_raw(body: bytes, shape: tuple[int, ...], channels: int, size: int) -> np.ndarray:
    """Raw uint8 pixels in C,H,W order that must be exactly the model's input shape."""
    expected = (channels, size, size)
    if shape != expected:
        raise HttpError(400, f"raw pixels must have shape {','.join(map(str, expected))} "
                             f"(C,H,W), got {','.join(map(str, shape))}")
    if len(body) != math.prod(shape):
        raise HttpError(400, f"raw pixels of shape {shape} need {math.prod(shape)} bytes, "
                             f"got {len(body)}")
    return np.frombuffer(body, np.uint8).reshape(1, *shape).copy()


def decode_image(body: bytes, fmt: str, channels: int, size: int, max_pixels: int) -> np.ndarray:
    """A PNG or JPEG as uint8 (1, C, size, size).

    The pixel count is read from the header and checked against `max_pixels` before decoding
    (decompression bombs). An image of the model's size is used as is; a smaller one is
    zero-padded in the centre (Fashion-MNIST's 28x28 into 32x32, as in training); a larger
    or non-square one is resized (bilinear). Grey models get luminance, colour models RGB.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(body), formats=[fmt]) as img:
                width, height = img.size
                if width < 1 or height < 1 or width * height > max_pixels:
                    raise HttpError(413, f"image is {width}x{height} = {width * height} pixels; "
                                         f"the limit is {max_pixels}")
                img = img.convert("L" if channels == 1 else "RGB")
    except HttpError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise HttpError(413, f"image refused as a decompression bomb: {err}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise HttpError(400, f"body is not a readable {fmt} image: {err}") from None
    if (width, height) != (size, size):
        if width <= size and height <= size:
            canvas = Image.new(img.mode, (size, size))
            canvas.paste(img, ((size - width) // 2, (size - height) // 2))
            img = canvas
        else:
            img = img.resize((size, size), Image.Resampling.BILINEAR)
    pixels = np.asarray(img, dtype=np.uint8)
    pixels = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return np.array(pixels[None], dtype=np.uint8, order="C")  # a writable copy


def decode_pixels(body: bytes, content_type: str | None, shape_text: str | None, channels: int,
                  size: int, max_pixels: int) -> np.ndarray:
    """uint8 (1, C, size, size) from a PNG/JPEG body or raw bytes, by Content-Type (415 else)."""
    kind = media_type(content_type)
    if kind in IMAGE_TYPES:
        return decode_image(body, IMAGE_TYPES[kind], channels, size, max_pixels)
    if kind in RAW_TYPES:
        return decode_raw(body, parse_shape(shape_text), channels, size)
    raise HttpError(415, f"Content-Type {kind or '(none)'!r} is not supported; send "
                         f"{', '.join(sorted(IMAGE_TYPES))} or {RAW_TYPES[0]} with ?shape=C,H,W")
