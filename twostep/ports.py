"""A free TCP port on 127.0.0.1 (for servers the tools start on this machine)."""

import socket


def free_port() -> int:
    """A TCP port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
