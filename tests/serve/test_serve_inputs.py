"""HTTP request validation: typed query parameters, constraints, bodies, images (incl. bombs), raw pixels."""

import asyncio
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from serve.inputs import HttpError, decode_pixels, read_body
from serve.queries import (
    ClassifyQuery,
    HeadQuery,
    LinkQuery,
    NoQuery,
    PlanQuery,
    PlanTableQuery,
    TailQuery,
    describe_errors,
    parse_query,
)


def status(call) -> int:
    with pytest.raises(HttpError) as info:
        call()
    assert info.value.message
    return info.value.status


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def with_ihdr_size(data: bytes, width: int, height: int) -> bytes:
    """A PNG whose header claims another size (valid CRC): what a decompression bomb looks like."""
    assert data[12:16] == b"IHDR"
    fields = struct.pack(">II", width, height) + data[24:29]
    chunk = b"IHDR" + fields
    return data[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


def bad_query(model, **params) -> str:
    """The one-line 400 message for `params` (FastAPI hands the same errors to the handler)."""
    with pytest.raises(ValidationError) as info:
        model.model_validate(params)
    message = describe_errors(info.value.errors())
    assert message and "\n" not in message
    return message


def test_unknown_query_parameters_are_named():
    assert ClassifyQuery.model_validate({"accuracy_floor": "0.9"}).accuracy_floor == 0.9
    assert bad_query(ClassifyQuery, accuracy_flor="0.9").startswith(
        "unknown query parameter(s) accuracy_flor")
    assert "unknown query parameter(s) x" in bad_query(NoQuery, x="1")


@pytest.mark.parametrize("text", ["abc", "nan", "inf", "-0.1", "1.5", ""])
def test_numbers_out_of_range_are_refused(text):
    assert "accuracy_floor" in bad_query(ClassifyQuery, accuracy_floor=text)


def test_constraints():
    assert PlanQuery.model_validate({"latency_budget_ms": "50"}).latency_budget_ms == 50.0
    for bad in ({"accuracy_floor": "0.5", "latency_budget_ms": "9"}, {"latency_budget_ms": "0"},
                {"latency_budget_ms": "-5"}, {"accuracy_floor": "2"}, {"latency_budget_ms": "1e99"},
                {"latency_budget_ms": "nan"}):
        assert bad_query(PlanQuery, **bad)
    assert "not both" in bad_query(PlanQuery, accuracy_floor="0.5", latency_budget_ms="9")
    assert "needs device_slowdown" in bad_query(PlanTableQuery, device_overhead_ms="2")
    assert PlanTableQuery.model_validate({"frames_only": "true"}).frames_only is True


def test_the_hot_routes_parse_with_the_same_models():
    assert parse_query(TailQuery, {"split": "pool3", "link": "phone-1"}).link == "phone-1"
    with pytest.raises(HttpError) as info:
        parse_query(TailQuery, {"split": "pool3", "uplink": "1mbit"})
    assert info.value.status == 400
    assert info.value.message == bad_query(TailQuery, split="pool3", uplink="1mbit")


def test_other_parameters():
    assert TailQuery.model_validate({"uplink_bps": "1mbit"}).uplink_bps == 1e6
    assert TailQuery.model_validate({}).uplink_bps is None
    assert "uplink_bps" in bad_query(TailQuery, uplink_bps="0")
    assert "cannot read bandwidth 'fast'" in bad_query(TailQuery, uplink_bps="fast")
    assert LinkQuery.model_validate({}).link == "default"
    assert LinkQuery.model_validate({"link": "phone-1"}).link == "phone-1"
    assert "link" in bad_query(LinkQuery, link="a b")
    assert "link" in bad_query(LinkQuery, link="x" * 65)
    assert "variant" in bad_query(ClassifyQuery, variant="../etc/passwd")
    assert PlanQuery.model_validate({}).top == 5 and PlanQuery.model_validate({"top": "3"}).top == 3
    assert "top" in bad_query(PlanQuery, top="0") and "top" in bad_query(PlanQuery, top="-1")
    assert "format" in bad_query(HeadQuery, format="pickle")
    assert "shape" in bad_query(ClassifyQuery, shape="1;32;32")


async def _chunks(parts):
    for part in parts:
        yield part


def test_bodies_are_capped():
    assert asyncio.run(read_body(_chunks([b"ab", b"c"]), "3", 10)) == b"abc"
    assert status(lambda: asyncio.run(read_body(_chunks([b"x"]), "11", 10))) == 413
    assert status(lambda: asyncio.run(read_body(_chunks([b"x" * 6, b"x" * 6]), None, 10))) == 413
    assert status(lambda: asyncio.run(read_body(_chunks([]), None, 10))) == 400
    assert status(lambda: asyncio.run(read_body(_chunks([b"x"]), "-1", 10))) == 400


def test_png_and_jpeg_become_model_input():
    grey = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    pixels = decode_pixels(png(grey), "image/png", None, 1, 32, 1 << 20)
    assert pixels.shape == (1, 1, 32, 32) and pixels.dtype == np.uint8
    assert np.array_equal(pixels[0, 0], grey)
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[..., 2] = 200
    buffer = io.BytesIO()
    Image.fromarray(colour).save(buffer, format="JPEG", quality=95)
    rgb = decode_pixels(buffer.getvalue(), "image/jpeg; charset=binary", None, 3, 32, 1 << 20)
    assert rgb.shape == (1, 3, 32, 32) and abs(int(rgb[0, 2].mean()) - 200) < 5
    grey_from_colour = decode_pixels(png(colour), "image/png", None, 1, 32, 1 << 20)
    assert grey_from_colour.shape == (1, 1, 32, 32)


def test_small_images_are_padded_and_large_ones_resized():
    small = np.full((28, 28), 255, np.uint8)
    padded = decode_pixels(png(small), "image/png", None, 1, 32, 1 << 20)[0, 0]
    assert padded[2:30, 2:30].min() == 255 and padded[:2].max() == 0 and padded[:, 30:].max() == 0
    large = decode_pixels(png(np.full((64, 50), 7, np.uint8)), "image/png", None, 1, 32, 1 << 20)
    assert large.shape == (1, 1, 32, 32) and large.max() == 7


def test_bombs_garbage_and_wrong_types_are_refused():
    valid = png(np.zeros((32, 32), np.uint8))
    bomb = with_ihdr_size(valid, 60_000, 60_000)  # 3.6 G pixels claimed, a few bytes sent
    assert status(lambda: decode_pixels(bomb, "image/png", None, 1, 32, 1 << 22)) == 413
    big = png(np.zeros((300, 300), np.uint8))
    assert status(lambda: decode_pixels(big, "image/png", None, 1, 32, 65536)) == 413
    assert status(lambda: decode_pixels(b"not an image", "image/png", None, 1, 32, 1 << 20)) == 400
    assert status(lambda: decode_pixels(valid[:40], "image/png", None, 1, 32, 1 << 20)) == 400
    assert status(lambda: decode_pixels(valid, "image/jpeg", None, 1, 32, 1 << 20)) == 400
    assert status(lambda: decode_pixels(valid, "text/plain", None, 1, 32, 1 << 20)) == 415
    assert status(lambda: decode_pixels(valid, None, None, 1, 32, 1 << 20)) == 415


def test_raw_pixels_need_the_exact_shape():
    raw = bytes(range(256)) * 4
    pixels = decode_pixels(raw, "application/octet-stream", "1,32,32", 1, 32, 1 << 20)
    assert pixels.shape == (1, 1, 32, 32) and pixels.flags.writeable
    for shape, body in (("3,32,32", raw), ("1,32,32", raw[:-1]), ("32,32", raw), ("1,x,32", raw),
                        ("1,32,32,1,1", raw), (None, raw)):
        assert status(lambda s=shape, b=body: decode_pixels(
            b, "application/octet-stream", s, 1, 32, 1 << 20)) == 400
