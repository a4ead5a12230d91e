"""Starting Serve's HTTP proxy, with retries.

Serve gives its proxy a fixed 60 s to come up; on a loaded two-core machine (a pruning job or a
test run beside it) it can miss that once and succeed on the next try. Every entry point that
starts Serve (`twostep serve`, `twostep demo`, `twostep bench`, the integration tests) uses this.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def start_http(host: str, port: int, attempts: int = 3) -> None:
    """`serve.start` on host:port without access logs, retried `attempts` times in all."""
    from ray import serve

    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    for attempt in range(1, attempts + 1):
        try:
            serve.start(http_options={"host": host, "port": port},
                        logging_config={"enable_access_log": False})
            return
        except Exception as err:  # Serve raises plain RuntimeError / TimeoutError variants here
            serve.shutdown()
            if attempt == attempts:
                raise
            log.warning("Serve's HTTP proxy did not start on %s:%d (%s); retrying (%d/%d)",
                        host, port, err, attempt + 1, attempts)
