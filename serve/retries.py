"""Calls from one deployment to another that survive a replica dying under them."""

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from serve.inputs import HttpError

logger = logging.getLogger("ray.serve")


def replica_failure(err: BaseException) -> bool:
    """Whether `err` means the replica died or is unreachable (so a retry may succeed)."""
    if isinstance(err, RayActorError | DeploymentUnavailableError | BackPressureError):
        return True
    return isinstance(err, RayTaskError) and isinstance(getattr(err, "cause", None), RayActorError)


async def call_with_retries(call: Callable[[], Awaitable[dict]], what: str, retries: int,
                            timeout_s: float) -> tuple[dict, int]:
    """(result of `await call()`, failed attempts before it), retrying when a replica died.

    Serve re-routes requests a dead replica had not yet accepted; one it was running fails with
    `ActorDiedError`, and is sent again here (head and tail calls are idempotent). A result with
    an `error` entry is the replica reporting a client error: HttpError with its status. 503
    when every attempt fails, 504 when one takes longer than `timeout_s`.
    """
    last: BaseException | None = None
    for attempt in range(retries + 1):
        try:
            result = await asyncio.wait_for(call(), timeout_s)
        except TimeoutError:
            raise HttpError(504, f"{what} did not answer in {timeout_s:g} s") from None
        except Exception as err:
            if not replica_failure(err):
                raise
            last = err
            logger.warning("%s failed (attempt %d): %s", what, attempt + 1, type(err).__name__)
            await asyncio.sleep(min(0.2 * 2 ** attempt, 2.0))
            continue
        if "error" in result:
            raise HttpError(result["status"], result["error"])
        return result, attempt
    raise HttpError(503, f"{what} unavailable after {retries + 1} attempts: {type(last).__name__}")
