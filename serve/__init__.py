"""Ray Serve application for bandwidth-aware split inference of a model series.

Pure parts (no Ray): `bandwidth` (estimator), `link` (link emulation), `planner` (choice with
hysteresis), `inputs` (HTTP request validation), `runner` (head/tail of one variant), `weights`
(head weights for devices), `client` (the device client). Serve parts: `head`, `tail`, `router`
and `app` (`build_app`). Names that need Ray are imported on first use, so the device client and
the pure modules do not pull Ray in.
"""

from serve.bandwidth import BandwidthEstimator as BandwidthEstimator
from serve.bandwidth import EstimatorConfig as EstimatorConfig
from serve.link import LinkEmulator as LinkEmulator
from serve.settings import AppArgs as AppArgs

__all__ = ["AppArgs", "BandwidthEstimator", "DeviceClient", "EstimatorConfig", "LinkEmulator",
           "build_app"]


def __getattr__(name: str):
    if name == "build_app":
        from serve.app import build_app

        return build_app
    if name == "DeviceClient":
        from serve.client import DeviceClient

        return DeviceClient
    raise AttributeError(f"module 'serve' has no attribute {name!r}")
