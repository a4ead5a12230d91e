"""End-to-end latency model of split inference: device head, link transfer, edge tail.

`L = T_device(head) + bytes_sent * 8 / bandwidth + RTT + T_edge(tail)`. Nothing is sent when the
whole network runs on the device (split `output`, `bytes_sent == 0`), so that case pays no RTT.
Also the sizes of the "send the input" baselines: raw 8-bit pixels, or a JPEG of the image.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # a device client plans without torch, which the registry imports
    from pipeline.models.registry import ArchSpec

# 1 Tbit/s: anything above is a unit mistake (bytes vs bits, or a missing prefix).
MAX_BANDWIDTH_BPS = 1e12
# One hour: a longer round trip is a unit mistake (seconds or microseconds given as ms).
MAX_RTT_MS = 3_600_000.0

_UNITS = {"": 1.0, "bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
_BANDWIDTH_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)(?:/s|ps)?\s*$")


def _check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


@dataclass(frozen=True)
class Link:
    """A device-to-edge link.

    Attributes:
        bandwidth_bps: usable throughput in bits per second, in (0, 1e12].
        rtt_ms: round-trip time added once per request that sends anything.
    """

    bandwidth_bps: float
    rtt_ms: float = 0.0

    def __post_init__(self):
        bandwidth = _check_real("bandwidth_bps", self.bandwidth_bps)
        if not 0 < bandwidth <= MAX_BANDWIDTH_BPS:
            raise ValueError(
                f"bandwidth must be in (0, {MAX_BANDWIDTH_BPS:.0e}] bit/s, "
                f"got {self.bandwidth_bps!r}"
            )
        rtt = _check_real("rtt_ms", self.rtt_ms)
        if not 0 <= rtt <= MAX_RTT_MS:
            raise ValueError(f"rtt_ms must be in [0, {MAX_RTT_MS:.0f}], got {self.rtt_ms!r}")
        object.__setattr__(self, "bandwidth_bps", bandwidth)
        object.__setattr__(self, "rtt_ms", rtt)

    def transfer_ms(self, bytes_sent: float) -> float:
        """Milliseconds to send `bytes_sent` bytes (0 when nothing is sent)."""
        bytes_sent = _check_real("bytes_sent", bytes_sent)
        if bytes_sent < 0:
            raise ValueError(f"bytes_sent must be >= 0, got {bytes_sent!r}")
        if bytes_sent == 0:
            return 0.0
        return bytes_sent * 8.0 / self.bandwidth_bps * 1000.0 + self.rtt_ms


@dataclass(frozen=True)
class Breakdown:
    """Where the time of one inference goes, in milliseconds."""

    device_ms: float
    transfer_ms: float
    edge_ms: float
    total_ms: float


def latency_breakdown(head_ms: float, bytes_sent: float, tail_ms: float, link: Link) -> Breakdown:
    """Latency of running the head on the device, sending `bytes_sent`, and the tail on the edge.

    Args:
        head_ms: device time of the head.
        bytes_sent: bytes on the wire; 0 means nothing is sent (all on the device), so no RTT.
        tail_ms: edge time of the tail.
        link: the link between them.
    """
    for name, value in (("head_ms", head_ms), ("tail_ms", tail_ms)):
        if _check_real(name, value) < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    transfer = link.transfer_ms(bytes_sent)
    head_ms, tail_ms = float(head_ms), float(tail_ms)
    return Breakdown(head_ms, transfer, tail_ms, head_ms + transfer + tail_ms)


def parse_bandwidth(text: str) -> float:
    """Bits per second from `2.5e6`, `250kbit`, `1mbit`, `1Mbit/s`, `1gbps` (case-insensitive).

    A bare number is bits per second. Raises ValueError naming the text when it does not parse
    or is outside (0, 1e12].
    """
    match = _BANDWIDTH_RE.match(str(text).lower())
    unit = match.group(2) if match else None
    if unit is not None and unit.endswith("bps"):
        unit = unit[:-3] + "bit"
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"cannot read bandwidth {text!r}; give bits per second as a number (2.5e6) or with "
            f"a unit: {', '.join(u for u in _UNITS if u)} (e.g. 250kbit, 1mbit)"
        )
    value = float(match.group(1)) * _UNITS[unit]
    if not 0 < value <= MAX_BANDWIDTH_BPS:
        raise ValueError(f"bandwidth {text!r} must be in (0, {MAX_BANDWIDTH_BPS:.0e}] bit/s")
    return value


def raw_input_bytes(spec: ArchSpec) -> int:
    """Bytes of one raw 8-bit input image of `spec` (C x H x W)."""
    return spec.in_channels * spec.input_size * spec.input_size


def jpeg_bytes(image: np.ndarray, quality: int = 90) -> int:
    """Size in bytes of `image` encoded as a baseline JPEG.

    Args:
        image: uint8 pixels, (H, W) grey, (H, W, 1) grey or (H, W, 3) RGB.
        quality: JPEG quality, 1..95 (Pillow's useful range).
    """
    from PIL import Image

    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 95:
        raise ValueError(f"JPEG quality must be an integer in 1..95, got {quality!r}")
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 pixels, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3) or 0 in image.shape:
        raise ValueError(f"image must be (H, W), (H, W, 1) or (H, W, 3), got shape {image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.tell()


