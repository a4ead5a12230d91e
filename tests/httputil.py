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


class PausableProxy:
    """A TCP proxy on 127.0.0.1 to `port` whose uplink (client -> server) can be paused: what
    the client sends meanwhile waits, as on a stalled link, and flows again on `resume`."""

    def __init__(self, port: int):
        import socket
        import threading

        self.target = port
        self.flowing = threading.Event()
        self.flowing.set()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source, sink, uplink: bool) -> None:
        try:
            while data := source.recv(65536):
                if uplink:
                    self.flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(2)
                except OSError:
                    pass

    def pause(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        self.flowing.set()
        self.server.close()
