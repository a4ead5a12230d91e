"""Environment defaults for the Ray sessions twostep starts, in one place.

Set before Ray starts (its processes read them at start-up); a value the user already set wins.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

RAY_ENV_DEFAULTS = {
    # The sessions twostep starts listen on this machine only; token auth would just print a
    # warning on every start.
    "RAY_AUTH_MODE": "disabled",
}


# A cluster twostep starts itself (`twostep.local_cluster`): no usage report from its nodes.
OWN_CLUSTER_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
# A Serve instance twostep shuts down itself (the demo, the tests): no in-flight request needs
# HAProxy's drain period (30 s by default) to finish, so the shutdown need not wait for it.
OWN_SERVE_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}


def apply_ray_env(env: MutableMapping[str, str] | None = None,
                  *extra: dict[str, str]) -> MutableMapping[str, str]:
    """Fill in `RAY_ENV_DEFAULTS` and any `extra` defaults (in `os.environ` unless an
    environment is given); returns it."""
    env = os.environ if env is None else env
    for defaults in (RAY_ENV_DEFAULTS, *extra):
        for name, value in defaults.items():
            env.setdefault(name, value)
    return env
