"""Starting Serve's HTTP proxy, with retries.

Serve gives its proxy a fixed 60 s to come up; on a loaded two-core machine (a pruning job or a
test run beside it) it can miss that once and succeed on the next try. Every entry point that
starts Serve (`twostep serve`, `twostep demo`, the edge process of `twostep bench`, the
integration tests) uses this. Only that timeout is retried: other errors (a port in use, bad
options) are raised at once.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def start_http(host: str, port: int, attempts: int = 3, proxy_location: str | None = None,
               log_level: str = "WARNING") -> tuple[str, int]:
    """`serve.start` on host:port without access logs, its controller and proxies logging at
    `log_level`, tried up to `attempts` times.

    A retry first shuts Serve down (every app of this Ray instance), so pass `attempts=1` when
    joining a cluster whose Serve instance others may use.

    Returns:
        (host, port) Serve's HTTP proxies listen on: those asked for, or, where Serve was already
        running on this cluster (started by someone else), its own, which cannot change.
    """
    from ray import serve
    from ray.exceptions import RayActorError

    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    for attempt in range(1, attempts + 1):
        try:
            serve.start(http_options={"host": host, "port": port},
                        logging_config={"enable_access_log": False, "log_level": log_level},
                        **({"proxy_location": proxy_location} if proxy_location else {}))
            return _listening(host, port)
        # what serve.start raises when its proxy is not up in time, and when the controller gave
        # up on a proxy that missed its readiness checks and killed it (both cores busy: seen
        # with the HAProxy manager beside a pruning job)
        except (TimeoutError, RayActorError) as err:
            if attempt == attempts:
                raise
            serve.shutdown()
            log.warning("Serve's HTTP proxy did not start on %s:%d (%s); retrying (%d/%d)",
                        host, port, err, attempt + 1, attempts)


def _listening(host: str, port: int) -> tuple[str, int]:
    import ray
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False) if ray.is_initialized() else None
    if client is None:
        return host, port
    config = client.http_config
    if (config.host, config.port) != (host, port):
        log.warning("Serve already runs on this cluster with HTTP on %s:%d; using it (not %s:%d)",
                    config.host, config.port, host, port)
    return config.host, config.port
