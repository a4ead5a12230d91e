"""Small helpers the HTTP integration tests share: a free port on 127.0.0.1, a PNG of pixels."""

import io
import socket

import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(pixels: np.ndarray) -> bytes:
    """PNG of grey uint8 pixels (1, 1, H, W)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels[0, 0]).save(buffer, format="PNG")
    return buffer.getvalue()
