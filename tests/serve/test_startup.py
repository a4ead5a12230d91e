"""The retry around Serve's proxy start. A proxy that misses Serve's 60 s start-up deadline cannot
be produced on demand, so `serve.start` is replaced by one that fails a set number of times."""

import pytest
from ray import serve

from serve.process.startup import start_http


def _flaky_start(monkeypatch, failures, error=None):
    calls = {"start": 0, "shutdown": 0}

    def start(http_options, logging_config):
        calls["start"] += 1
        assert http_options == {"host": "127.0.0.1", "port": 8123}
        if calls["start"] <= failures:
            raise error or TimeoutError("HTTP proxy not ready in 60 s")

    monkeypatch.setattr(serve, "start", start)
    monkeypatch.setattr(serve, "shutdown", lambda: calls.__setitem__("shutdown", calls["shutdown"] + 1))
    return calls


def test_a_proxy_that_misses_its_deadline_is_started_again(monkeypatch):
    calls = _flaky_start(monkeypatch, failures=2)
    start_http("127.0.0.1", 8123, attempts=3)
    assert calls == {"start": 3, "shutdown": 2}


def test_a_proxy_killed_after_missing_its_readiness_checks_is_started_again(monkeypatch):
    from ray.exceptions import ActorDiedError

    calls = _flaky_start(monkeypatch, failures=1, error=ActorDiedError())
    start_http("127.0.0.1", 8123, attempts=3)
    assert calls == {"start": 2, "shutdown": 1}


def test_the_last_failure_is_raised(monkeypatch):
    calls = _flaky_start(monkeypatch, failures=5)
    with pytest.raises(TimeoutError, match="60 s"):
        start_http("127.0.0.1", 8123, attempts=2)
    assert calls == {"start": 2, "shutdown": 1}  # no shutdown after the last try


def test_other_errors_are_not_retried(monkeypatch):
    calls = {"start": 0}

    def start(http_options, logging_config):
        calls["start"] += 1
        raise RuntimeError("address already in use")

    monkeypatch.setattr(serve, "start", start)
    with pytest.raises(RuntimeError, match="in use"):
        start_http("127.0.0.1", 8123, attempts=3)
    assert calls["start"] == 1


def test_attempts_must_be_positive():
    with pytest.raises(ValueError, match="attempts"):
        start_http("127.0.0.1", 8123, attempts=0)
