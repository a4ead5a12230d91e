"""Profile every variant of a series with the runtime that will serve it (one home for this:
`twostep profile`, the demo and `twostep bench` call `profile_series`, and every profile of one
model, the Router's calibration included, `profile_as_served`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pipeline.codec import codec_config
from pipeline.models.registry import ArchSpec
from pipeline.profiler import codec_timing, profile_document, profile_model
from pipeline.runtime import DEFAULT_RUNTIME, check_runtime
from pipeline.series import SeriesStore


def profile_series(store: SeriesStore, runtime: str = DEFAULT_RUNTIME, threads: int = 1, warmup: int = 3,
                   repeats: int = 15, idle_ms: float = 0.0, variants: list[str] | None = None,
                   progress: Callable[[str], None] | None = None, batch_size: int = 1,
                   device: str = "cpu") -> dict:
    """A profile document of `variants` (default all) of `store`, timed as served: batch 1 on
    this CPU with `threads` threads, by `runtime` (torch: every stage, and may time `batch_size`
    images on `device`; onnxruntime: the head graphs at the splits each variant offers,
    `pipeline.onnx_profile`), plus the codec's encode/decode timing that the planner charges
    each split that sends a frame."""
    check_runtime(runtime)
    if runtime == "onnxruntime" and torch.device(device).type != "cpu":
        raise ValueError("runtime onnxruntime is timed on the cpu")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        entries = {}
        for vid in variants if variants is not None else store.ids():
            model, spec, entry = store.load_model(vid)
            entries[vid] = profile_as_served(model, spec, runtime, list(entry.splits), batch_size,
                                             warmup, repeats, threads, idle_ms, device)
            if progress is not None:
                progress(vid)
        doc = profile_document(entries, batch_size, warmup, repeats, device, runtime, idle_ms)
        doc["machine"]["threads"] = threads
        doc["codec"] = codec_timing(codec_config(store.manifest.codec), idle_ms=idle_ms)
    finally:
        torch.set_num_threads(previous)
    return doc


def profile_as_served(model: nn.Module, spec: ArchSpec, runtime: str = DEFAULT_RUNTIME,
                      splits: list[str] | None = None, batch_size: int = 1, warmup: int = 3,
                      repeats: int = 15, threads: int = 1, idle_ms: float = 0.0,
                      device: str = "cpu") -> dict:
    """One variant's profile entry, timed by the runtime that serves it: its ONNX head graphs at
    `splits` (default every split) for onnxruntime, every stage of the eager model for torch (the
    one home of this choice: `profile_series`, `twostep profile`, the Router's calibration)."""
    check_runtime(runtime)
    if runtime == "torch":
        return profile_model(model, spec, batch_size, warmup, repeats, device, idle_ms)
    from pipeline.onnx_profile import profile_onnx

    return profile_onnx(model, spec, splits, batch_size, warmup, repeats, threads, idle_ms)
