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


def apply_ray_env(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Fill in `RAY_ENV_DEFAULTS` (in `os.environ` unless an environment is given); returns it."""
    env = os.environ if env is None else env
    for name, value in RAY_ENV_DEFAULTS.items():
        env.setdefault(name, value)
    return env
