"""The router's retry of head/tail calls, with fake calls (no cluster)."""

import asyncio

import pytest
from ray.exceptions import ActorDiedError, RayTaskError

from serve.inputs import HttpError
from serve.retries import call_with_retries

REAL_SLEEP = asyncio.sleep


def run(calls, retries=3, timeout_s=5.0):
    """`calls`: what each attempt does: an exception to raise, a dict to return, or a delay."""
    attempts = iter(calls)

    async def call():
        outcome = next(attempts)
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, float):
            await REAL_SLEEP(outcome)
        return outcome

    return asyncio.run(call_with_retries(call, "finish", retries, timeout_s))


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    async def fast(seconds):
        await REAL_SLEEP(0)

    monkeypatch.setattr("serve.retries.asyncio.sleep", fast)


def test_a_dead_replica_is_retried():
    assert run([ActorDiedError(), ActorDiedError(), {"logits": [1]}]) == ({"logits": [1]}, 2)


def test_giving_up_is_a_503():
    with pytest.raises(HttpError) as info:
        run([ActorDiedError()] * 2, retries=1)
    assert info.value.status == 503 and "2 attempts" in info.value.message


def test_client_errors_from_the_replica_keep_their_status():
    with pytest.raises(HttpError) as info:
        run([{"error": "bad frame", "status": 400}])
    assert (info.value.status, info.value.message) == (400, "bad frame")


def test_other_errors_are_not_retried():
    with pytest.raises(RuntimeError):
        run([RuntimeError("bug"), {"ok": 1}])
    with pytest.raises(RayTaskError):
        run([RayTaskError("f", "tb", ValueError("user bug")), {"ok": 1}])


def test_a_slow_replica_is_a_504():
    with pytest.raises(HttpError) as info:
        run([5.0], timeout_s=0.05)
    assert info.value.status == 504
