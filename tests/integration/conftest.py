"""One Ray session for the whole test run (starting Ray costs ~7 s on two cores).

Tests that need Ray request `ray_session`; it yields nothing, it only makes sure Ray is running
(2 CPUs, no dashboard, worker logs not forwarded) and shuts it down when the run ends.
"""

import logging

import pytest

from twostep.ray_env import OWN_SERVE_ENV, apply_ray_env

# Serve's ingress replicas (HAProxy mode) keep serving for 30 s after they are told to stop, so
# that HAProxy takes them out of rotation first: every Serve shutdown in a test would wait that
# long, for traffic a teardown does not have. Set before any Ray starts (here or in a child).
apply_ray_env(None, OWN_SERVE_ENV)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
    yield
    if started:
        ray.shutdown()
