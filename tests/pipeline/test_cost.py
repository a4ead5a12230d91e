"""Cost model: latency arithmetic on hand-checked numbers, link validation, bandwidth parsing,
and the sizes of the send-the-input baselines."""

import math

import numpy as np
import pytest

from pipeline.cost import (
    Breakdown,
    Link,
    jpeg_bytes,
    latency_breakdown,
    parse_bandwidth,
    raw_input_bytes,
)
from pipeline.models import make_spec


def test_transfer_arithmetic():
    # 10,000 bytes = 80,000 bits; at 1 Mbit/s that is 80 ms.
    assert Link(1e6).transfer_ms(10_000) == pytest.approx(80.0)
    assert Link(1e6, rtt_ms=20).transfer_ms(10_000) == pytest.approx(100.0)
    assert Link(250e3).transfer_ms(3072) == pytest.approx(98.304)
    b = latency_breakdown(5.0, 10_000, 2.5, Link(1e6, rtt_ms=20))
    assert b == Breakdown(5.0, pytest.approx(100.0), 2.5, pytest.approx(107.5))


def test_nothing_sent_pays_no_transfer_or_rtt():
    b = latency_breakdown(12.0, 0, 0.0, Link(1e3, rtt_ms=50))
    assert b == Breakdown(12.0, 0.0, 0.0, 12.0)


@pytest.mark.parametrize("bandwidth", [0, -1e6, math.nan, math.inf, 1e13, "1e6", True, None])
def test_link_rejects_bad_bandwidth(bandwidth):
    with pytest.raises(ValueError, match="bandwidth"):
        Link(bandwidth)


@pytest.mark.parametrize("rtt", [-1, math.nan, math.inf, 1e9])
def test_link_rejects_bad_rtt(rtt):
    with pytest.raises(ValueError, match="rtt_ms"):
        Link(1e6, rtt)


def test_latency_breakdown_rejects_negative_values():
    with pytest.raises(ValueError, match="head_ms"):
        latency_breakdown(-1, 10, 1, Link(1e6))
    with pytest.raises(ValueError, match="bytes_sent"):
        latency_breakdown(1, -10, 1, Link(1e6))
    with pytest.raises(ValueError, match="tail_ms"):
        latency_breakdown(1, 10, math.nan, Link(1e6))


@pytest.mark.parametrize(
    ("text", "bps"),
    [("1mbit", 1e6), ("250kbit", 250e3), ("2.5e6", 2.5e6), ("1Mbit/s", 1e6), ("1gbit", 1e9),
     ("100bit", 100.0), ("8mbps", 8e6), (" 0.5 mbit ", 5e5), ("1000", 1000.0)],
)
def test_parse_bandwidth(text, bps):
    assert parse_bandwidth(text) == pytest.approx(bps)


@pytest.mark.parametrize("text", ["fast", "1tbit", "0", "-1mbit", "", "nan", "inf", "1e13", "1mb"])
def test_parse_bandwidth_rejects(text):
    with pytest.raises(ValueError, match="bandwidth"):
        parse_bandwidth(text)


def _smooth(h=32, w=32, channels=3):
    y, x = np.mgrid[0:h, 0:w]
    image = np.stack([(x * 8) % 256, (y * 8) % 256, ((x + y) * 4) % 256], axis=-1)
    return image[:, :, :channels].astype(np.uint8)


def test_jpeg_bytes_on_images():
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert 0 < jpeg_bytes(_smooth()) < jpeg_bytes(noise)
    assert jpeg_bytes(noise, quality=30) < jpeg_bytes(noise, quality=95)
    grey = _smooth(channels=1)
    assert jpeg_bytes(grey) == jpeg_bytes(grey[:, :, 0])
    assert raw_input_bytes(make_spec("vgg11", 0.0625, in_channels=1)) == 1024
    assert raw_input_bytes(make_spec("vgg16")) == 3072


def test_jpeg_bytes_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        jpeg_bytes(np.zeros((8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        jpeg_bytes(np.zeros((8, 8, 2), dtype=np.uint8))
    for quality in (0, 100, 9.5):
        with pytest.raises(ValueError, match="quality"):
            jpeg_bytes(_smooth(), quality=quality)
