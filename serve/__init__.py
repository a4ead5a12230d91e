"""Ray Serve application for bandwidth-aware split inference of a model series.

Pure parts (no Ray): `bandwidth` (estimator), `link` (link emulation), `planner` (choice with
hysteresis), `inputs` (HTTP request validation), `runner` (head/tail of one variant), `weights`
(head weights for devices), `device` (the device client, which runs on a phone). Serve parts:
`head`, `tail`, `router` and its parts, and `app` (`build_app`); `process` sets up the process
Serve runs in. docs/architecture.md has the map. Names that need Ray are imported on first use,
so the device client and the pure modules do not pull Ray in.
"""

import importlib

_EXPORTS = {"AppArgs": "serve.settings", "BandwidthEstimator": "serve.bandwidth",
            "DeviceClient": "serve.device.client", "EstimatorConfig": "serve.bandwidth",
            "LinkEmulator": "serve.link", "build_app": "serve.app"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Everything on first use: a device importing serve.device.client needs neither torch nor Ray.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'serve' has no attribute {name!r}")
