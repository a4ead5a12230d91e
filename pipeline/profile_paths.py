"""Where profiles live, one naming rule (torch-free): a series' edge profile is
`<series>/profile.json`; the device profile of an edge profile `X.json` is `X.device.json`."""

from __future__ import annotations

import os
from pathlib import Path

EDGE_PROFILE = "profile.json"
DEVICE_PROFILE = "profile.device.json"
SERIES_PROFILES = (EDGE_PROFILE, DEVICE_PROFILE)  # what a series directory may hold


def series_edge_profile(series_dir: str | os.PathLike) -> Path:
    return Path(series_dir) / EDGE_PROFILE


def device_profile_of(edge_path: str | os.PathLike) -> Path:
    """`X.device.json` beside the edge profile `X.json`."""
    edge_path = Path(edge_path)
    return edge_path.with_name(f"{edge_path.name.removesuffix('.json')}.device.json")
