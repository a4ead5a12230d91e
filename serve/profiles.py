"""The latency profiles the router's cost model plans with: from files, or estimated at start-up.

Edge profile, in order: the file given, `<series>/profile.json` (written by `twostep profile`),
or an estimate. The estimate times every layer as `layer_ms + ms_per_mmac * MACs / 1e6`; both
constants are given, or fitted at start-up to `pipeline.profile_series.profile_as_served` timings of one
variant (the base), which costs well under a second for small models. Device profile: the file
given, `<edge profile>.device.json` next to an edge profile file, or the edge profile times
`slowdown` (the paper's `T_device = gamma x T_edge`, `pipeline.profiler.derive_profile`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from pipeline.models.registry import ArchSpec
from pipeline.profile_paths import device_profile_of, series_edge_profile
from pipeline.profile_series import profile_as_served
from pipeline.profiler import (
    derive_profile,
    load_profile,
    profile_document,
    timings_from_layers,
)
from pipeline.runtime import DEFAULT_RUNTIME
from pipeline.series import Manifest
from pipeline.split import stage_costs


@dataclass(frozen=True)
class Profiles:
    """Device and edge profile documents, and a line saying where they came from."""

    device: dict
    edge: dict
    source: str


def estimate_entry(spec: ArchSpec, ms_per_mmac: float, layer_ms: float = 0.0) -> dict:
    """A profile variant entry with each layer timed as `layer_ms + ms_per_mmac * MMACs`."""
    for name, value in (("ms_per_mmac", ms_per_mmac), ("layer_ms", layer_ms)):
        if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    costs = stage_costs(spec)[1:]  # skip `input`: it is not a layer
    names = [c.name for c in costs]
    times = [layer_ms + ms_per_mmac * c.macs / 1e6 for c in costs]
    return {"spec": spec.to_dict(), **timings_from_layers(names, times)}


def estimate_profile(manifest: Manifest, ms_per_mmac: float, layer_ms: float = 0.0) -> dict:
    """An edge profile document for every variant of `manifest`, estimated from MACs."""
    variants = {
        v.id: estimate_entry(v.arch_spec, ms_per_mmac, layer_ms) for v in manifest.variants
    }
    doc = profile_document(variants, batch_size=1, warmup=0, repeats=1)
    doc["estimated"] = {"ms_per_mmac": ms_per_mmac, "layer_ms": layer_ms}
    return doc


def calibrate(model: nn.Module, spec: ArchSpec, warmup: int = 2, repeats: int = 5,
              runtime: str = DEFAULT_RUNTIME) -> tuple[float, float]:
    """(ms_per_mmac, layer_ms) fitted by least squares to measured per-layer times of `model`,
    run by `runtime`."""
    measured = profile_as_served(model, spec, runtime, None, 1, warmup, repeats)
    macs = np.array([c.macs / 1e6 for c in stage_costs(spec)[1:]])
    return fit_cost(macs, np.array([layer["ms"] for layer in measured["layers"]]))


def fit_cost(mmacs: np.ndarray, ms: np.ndarray) -> tuple[float, float]:
    """(ms per MMAC, ms per layer) of `ms = a x mmacs + b` by least squares; when the times do
    not grow with the MACs (no slope to fit), all of the time is charged per MAC (b = 0)."""
    slope, intercept = np.polyfit(mmacs, ms, 1) if np.ptp(mmacs) > 0 else (0.0, float(ms.mean()))
    if slope <= 0:
        slope, intercept = float(ms.sum() / max(mmacs.sum(), 1e-9)), 0.0
    return float(slope), float(max(intercept, 0.0))


def resolve_profiles(
    series_dir: str | Path,
    manifest: Manifest,
    edge_profile: str | dict | None = None,
    device_profile: str | dict | None = None,
    slowdown: float = 5.0,
    ms_per_mmac: float | None = None,
    layer_ms: float = 0.0,
    calibration_model: tuple[nn.Module, ArchSpec] | None = None,
    runtime: str = DEFAULT_RUNTIME,
) -> Profiles:
    """Find or make the device and edge profiles (see the module docstring for the order).

    Args:
        edge_profile, device_profile: a file, or a profile document already read.
        calibration_model: the (model, spec) to time when the edge profile must be estimated and
            `ms_per_mmac` is not given.
    """
    series_dir = Path(series_dir)
    if isinstance(edge_profile, dict) or isinstance(device_profile, dict):
        # documents read where the app was built (its files may not exist on this node)
        edge_doc = edge_profile if isinstance(edge_profile, dict) else None
        device_doc = device_profile if isinstance(device_profile, dict) else None
        inner = resolve_profiles(series_dir, manifest, None if edge_doc else edge_profile, None,
                                 slowdown, ms_per_mmac, layer_ms, calibration_model, runtime) \
            if edge_doc is None else Profiles(derive_profile(edge_doc, slowdown), edge_doc,
                                               "edge profile (given)")
        if device_doc is not None:
            return Profiles(device_doc, inner.edge, f"{inner.source.split(';')[0]}; device profile (given)")
        return inner
    edge_path = Path(edge_profile) if edge_profile else series_edge_profile(series_dir)
    if edge_profile or edge_path.is_file():
        edge = load_profile(edge_path)
        edge_source = f"edge profile {edge_path}"
    else:
        edge_path = None
        if ms_per_mmac is None:
            if calibration_model is None:
                raise ValueError("no edge profile and no ms_per_mmac: give one, or a model to time")
            ms_per_mmac, layer_ms = calibrate(*calibration_model, runtime=runtime)
            edge_source = "edge estimated from MACs, calibrated at start-up"
        else:
            edge_source = "edge estimated from MACs"
        edge = estimate_profile(manifest, ms_per_mmac, layer_ms)
        edge_source += f" ({ms_per_mmac:.4g} ms/MMAC + {layer_ms:.4g} ms/layer)"
    if device_profile:
        return Profiles(load_profile(device_profile), edge, f"{edge_source}; device profile {device_profile}")
    if edge_path is not None:
        sibling = device_profile_of(edge_path)
        if sibling.is_file():
            return Profiles(load_profile(sibling), edge, f"{edge_source}; device profile {sibling}")
    device = derive_profile(edge, slowdown)
    return Profiles(device, edge, f"{edge_source}; device = {slowdown:g} x edge")
