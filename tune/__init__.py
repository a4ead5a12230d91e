"""twostep on Ray Tune: step 1 as a trial, step 2 fanned out per pruned layer, into a series.

`tune -> pipeline` only (never `serve`). The names below are imported lazily, so importing a
pure module such as `tune.plan` does not pay for importing Ray.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "launch_pruning": "tune.launch",
    "init_ray": "tune.launch",
    "TrialsFailedError": "tune.launch",
    "TrialResources": "tune.plan",
    "Step1Search": "tune.plan",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tune' has no attribute {name!r}")
