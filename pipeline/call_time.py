"""Time per MAC: each step-1 model's device-runtime call against the base's, next to its MAC cut.

A model's call is timed as the serving path runs it on a device: the ONNX graph of the whole
model (uint8 pixels to logits, BatchNorm folded, `pipeline.onnx_graphs`) in ONNX Runtime, batch
1, one thread, after an idle gap before every call (`IDLE_MS`, the gap `twostep bench` profiles
at; a call after a wait is dearer than one in a tight loop). The models are timed round-robin
(`pipeline.profiler.median_ms`), so load from other processes hits all of them alike.

The manifest keeps the figures under `step1_call_times` (series made before it have none:
`twostep series time DIR` measures them)::

    {"runtime": "onnxruntime", "batch_size": 1, "threads": 1, "idle_ms": 5.0, "repeats": 30,
     "measured": ISO-8601 UTC, "base": id, "base_ms": ms,
     "variants": {id: {"ms", "mac_reduction", "time_reduction", "time_per_mac"}}}

`time_per_mac` is time reduction / MAC reduction: 1.0 when a MAC cut shows in full as time.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import torch
from torch import nn

from pipeline.data import DataInfo
from pipeline.models.registry import ArchSpec
from pipeline.profiler import median_ms
from pipeline.series import Manifest

IDLE_MS = 5.0  # `twostep bench`'s profile_idle_ms: the idle gap before each timed call
REPEATS = 30
WARMUP = 5
TARGET = 0.8  # issue 26: a step-1 model's time reduction >= 0.8 x its MAC reduction
FIELD = "step1_call_times"


def model_graph(model: nn.Module, spec: ArchSpec, info: DataInfo | None = None,
                batch_size: int = 1) -> tuple[bytes, np.ndarray]:
    """(graph, pixels): the whole model's ONNX graph as a device runs it (uint8 pixels to
    logits) and a batch of random pixels to call it on; `info` gives the normalisation in the
    graph (by default mean 0, std 1: the time does not depend on it)."""
    from pipeline.onnx_graphs import head_graph

    shape = (spec.in_channels, spec.input_size, spec.input_size)
    if info is None:
        info = DataInfo("timing", spec.in_channels, spec.num_classes, spec.input_size,
                        (0.0,) * spec.in_channels, (1.0,) * spec.in_channels, ())
    pixels = np.random.default_rng(0).integers(0, 256, (batch_size, *shape), dtype=np.uint8)
    return head_graph(model, shape, info, "output"), pixels


def onnx_model_call(model: nn.Module, spec: ArchSpec, info: DataInfo | None = None,
                    threads: int = 1, batch_size: int = 1) -> tuple[Callable, np.ndarray]:
    """(call, pixels): `model_graph` in ONNX Runtime with `threads` threads."""
    from pipeline.onnx_session import GraphRunner

    graph, pixels = model_graph(model, spec, info, batch_size)
    return GraphRunner(graph, threads=threads), pixels


def call_ms(models: dict[str, tuple[nn.Module, ArchSpec]], idle_ms: float = IDLE_MS,
            repeats: int = REPEATS, warmup: int = WARMUP, threads: int = 1) -> dict[str, float]:
    """Median ONNX Runtime call time (batch 1) of each model, timed round-robin, `idle_ms`
    idle before every call."""
    runs = {name: onnx_model_call(model, spec, threads=threads)
            for name, (model, spec) in models.items()}
    calls = [lambda run=run, x=x: run(x) for run, x in runs.values()]
    return dict(zip(runs, median_ms(calls, warmup, repeats, idle_ms=idle_ms), strict=True))


def step1_call_times(store, idle_ms: float = IDLE_MS, repeats: int = REPEATS,
                     variants: list[str] | None = None) -> dict:
    """Time the base and each step-1 variant of `store` (a `SeriesStore`; `variants`: ids to
    time instead of every step-1 variant) and return the manifest's `step1_call_times` entry."""
    base = store.manifest.base
    if base is None:
        raise ValueError(f"{store.directory} has no base model to time against")
    ids = list(variants) if variants is not None else [v.id for v in store.manifest.step(1)]
    ids = [vid for vid in dict.fromkeys(ids) if vid != base]
    models = {vid: store.load_model(vid)[:2] for vid in [base, *ids]}
    with torch.inference_mode():
        times = call_ms(models, idle_ms, repeats)
    base_ms, base_macs = times[base], store.get(base).macs
    rows = {}
    for vid in ids:
        mac_reduction = base_macs / store.get(vid).macs
        time_reduction = base_ms / times[vid]
        rows[vid] = {"ms": times[vid], "mac_reduction": mac_reduction,
                     "time_reduction": time_reduction, "time_per_mac": time_reduction / mac_reduction}
    return {"runtime": "onnxruntime", "batch_size": 1, "threads": 1, "idle_ms": idle_ms,
            "repeats": repeats, "measured": datetime.now(UTC).isoformat(timespec="seconds"),
            "base": base, "base_ms": base_ms, "variants": rows}


def format_call_times(manifest: Manifest, document: dict | None = None) -> list[str]:
    """Lines for `twostep series show`: each timed model's call against the base's, its MAC and
    time reductions and their ratio; a hint where a series with step-1 models has no figures.
    `document`: figures to show instead of the manifest's own (measured, not yet recorded)."""
    document = document if document is not None else manifest.step1_call_times
    if not document or not document.get("variants"):
        if manifest.step(1):
            return ["step-1 call times: not measured (`twostep series time DIR` times them)"]
        return []
    kept = manifest.step1
    lines = [f"step-1 call times (ONNX Runtime, batch 1, {document['threads']} thread, "
             f"{document['idle_ms']:g} ms idle before each call, median of {document['repeats']}, "
             f"{document['measured']}): base {document['base_ms']:.3f} ms; target: time reduction "
             f">= {TARGET} x MAC reduction",
             f"  {'variant':<26}{'ms':>9}{'MAC red':>9}{'time red':>10}{'time/MAC':>10}"]
    for vid, row in document["variants"].items():
        mark = " (kept)" if vid == kept else ""
        verdict = "" if row["time_per_mac"] >= TARGET else "  below target"
        lines.append(f"  {vid:<26}{row['ms']:>9.3f}{row['mac_reduction']:>8.2f}x"
                     f"{row['time_reduction']:>9.2f}x{row['time_per_mac']:>10.2f}{verdict}{mark}")
    return lines
