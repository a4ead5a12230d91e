"""Small helpers the HTTP integration tests share: a free port on 127.0.0.1, a PNG of pixels."""

import io

import numpy as np
from PIL import Image

from twostep.ports import free_port  # noqa: F401  (the tests' one import of it)


def stoppable_by_sigint() -> None:
    """`preexec_fn` for a server a test stops with SIGINT (as Ctrl-C would): a shell that runs
    the test suite in the background starts it with SIGINT ignored, which children inherit."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def png(pixels: np.ndarray) -> bytes:
    """PNG of grey uint8 pixels (1, 1, H, W)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels[0, 0]).save(buffer, format="PNG")
    return buffer.getvalue()


def wait_healthy(url: str, proc, timeout_s: float = 240.0, output=None) -> dict:
    """GET `url` until it answers 200 (its JSON) while the server process `proc` runs.

    Raises AssertionError if the process exits (with the tail of `output()`, when given) or the
    deadline passes: the server did not come up."""
    import time

    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = output()[-3000:] if output else ""
            raise AssertionError(f"the server exited ({proc.returncode}): {tail}")
        try:
            response = requests.get(url, timeout=30)
            if response.status_code == 200:
                return response.json()
        except requests.RequestException:
            pass
        time.sleep(1.0)
    raise AssertionError(f"{url} did not answer in {timeout_s:g} s")
