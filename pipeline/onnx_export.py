"""`twostep export`: ONNX heads and tails of a series' variants, checked and recorded in its manifest.

Files: `DIR/onnx/<variant>/<split>.head.onnx` and `.tail.onnx` (graphs of `pipeline.onnx_graphs`).
Each exported variant's manifest entry gets

    "onnx": {split: {"head": {"path", "sha256", "bytes"} | null, "tail": ... | null,
                     "max_abs_diff": float, "images": n, "same_prediction": n}}

(no head at `input`, no tail at `output`) and the manifest `"onnx_export": {"opset", "torch",
"onnxruntime", "images"}`. Every graph pair is run with ONNX Runtime on real test images and
compared with the PyTorch model: the largest absolute difference (features and logits) is
recorded, and the predictions must be equal wherever the model's top-1 margin exceeds twice it.

Graphs are written first, the manifest once at the end: a failure (a check, a full disk) leaves
the manifest as it was and removes this run's files, so a series is never left half exported.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from pipeline.atomic import write_bytes_atomic
from pipeline.data import DataInfo, normalize
from pipeline.models.inference import inference_form
from pipeline.onnx_graphs import OPSET, head_graph, tail_graph
from pipeline.onnx_session import GraphRunner
from pipeline.series import SeriesStore, graph_files
from pipeline.split import split_model

ONNX_DIR = "onnx"


class ExportError(RuntimeError):
    """An export that could not be completed or checked; the series is left unchanged."""


def graph_path(variant_id: str, split: str, part: str, sha256: str) -> str:
    """Path of a graph inside the series directory (`part` is head or tail). The name holds
    the start of its sha256, so a new export never overwrites a file the manifest points at."""
    return f"{ONNX_DIR}/{variant_id}/{split}.{part}.{sha256[:12]}.onnx"


def check_graphs(model: torch.nn.Module, info: DataInfo, split: str, head: bytes | None,
                 tail: bytes | None, pixels: np.ndarray) -> dict:
    """Run the graphs on `pixels` (uint8 N,C,S,S) with ONNX Runtime against PyTorch.

    Returns:
        {"max_abs_diff", "images", "same_prediction"}; ExportError when a prediction differs
        where the margin says it must not, or an output is not finite.
    """
    torch_head, torch_tail = split_model(inference_form(model), split)
    with torch.inference_mode():
        x = normalize(torch.from_numpy(np.ascontiguousarray(pixels)), info)
        features_t = torch_head(x).numpy()
        logits_t = torch_tail(torch.from_numpy(features_t)).numpy()
    features_o = GraphRunner(head)(pixels) if head is not None else x.numpy()
    logits_o = GraphRunner(tail)(features_o) if tail is not None else features_o
    if not (np.isfinite(features_o).all() and np.isfinite(logits_o).all()):
        raise ExportError(f"split {split}: ONNX Runtime gave non-finite outputs")
    diff = max(float(np.abs(features_o - features_t).max()), float(np.abs(logits_o - logits_t).max()))
    ranked = np.sort(logits_t, axis=1)
    margin = ranked[:, -1] - ranked[:, -2]
    same = logits_o.argmax(1) == logits_t.argmax(1)
    wrong = ~same & (margin > 2 * diff)
    if wrong.any():
        raise ExportError(f"split {split}: ONNX Runtime predicts differently from PyTorch on "
                          f"{int(wrong.sum())} of {len(pixels)} images whose top-1 margin exceeds "
                          f"the largest difference ({diff:.2e})")
    return {"max_abs_diff": diff, "images": int(len(pixels)), "same_prediction": int(same.sum())}


def _record(store: SeriesStore, vid: str, split: str, part: str, data: bytes,
            written: list[Path]) -> dict:
    sha = hashlib.sha256(data).hexdigest()
    relative = graph_path(vid, split, part, sha)
    path = store.directory / relative
    if not path.is_file():
        write_bytes_atomic(path, data)
        written.append(path)
    return {"path": relative, "sha256": sha, "bytes": len(data)}


def _choose(store: SeriesStore, variants: Iterable[str] | None,
            splits: Iterable[str] | None) -> list[tuple[str, list[str]]]:
    ids = list(variants) if variants is not None else store.ids()
    for vid in ids:
        store.get(vid)  # SeriesError naming an unknown id
    wanted = None if splits is None else list(splits)
    plan = []
    for vid in ids:
        offered = list(store.get(vid).splits)
        if wanted is not None:
            unknown = [s for s in wanted if s not in offered and s not in ("input", "output")]
            if unknown and len(ids) == 1:
                raise ExportError(f"variant {vid} offers no split {unknown[0]!r}; it offers "
                                  f"{', '.join(offered)}")
            offered = [s for s in offered if s in wanted]
        if offered:
            plan.append((vid, offered))
    if not plan:
        raise ExportError("nothing to export: no chosen variant offers a chosen split")
    return plan


def export_series(directory: str | os.PathLike, pixels: np.ndarray, variants: Iterable[str] | None = None,
                  splits: Iterable[str] | None = None,
                  progress: Callable[[str], None] = lambda line: None) -> dict:
    """Export and check the heads and tails of `variants` (default all) at `splits` (default each
    variant's offered splits), record them in the manifest; returns {variant: {split: record}}."""
    import onnxruntime

    store = SeriesStore.open(directory)
    before = graph_files(store.manifest)
    info = DataInfo.from_dict(store.manifest.data)
    plan = _choose(store, variants, splits)
    written: list[Path] = []
    records: dict[str, dict] = {}
    try:
        for vid, offered in plan:
            model, spec, _ = store.load_model(vid)
            shape = (spec.in_channels, spec.input_size, spec.input_size)
            records[vid] = {}
            for split in offered:
                try:
                    head = None if split == "input" else head_graph(model, shape, info, split)
                    tail = None if split == "output" else tail_graph(model, shape, split)
                    check = check_graphs(model, info, split, head, tail, pixels)
                except ExportError:
                    raise
                except (RuntimeError, ValueError) as err:  # the exporter's, ONNX Runtime's
                    raise ExportError(f"{vid} @ {split}: {err}") from err
                records[vid][split] = {
                    "head": None if head is None else _record(store, vid, split, "head", head, written),
                    "tail": None if tail is None else _record(store, vid, split, "tail", tail, written),
                    **check}
                progress(f"{vid} @ {split}: max |onnx - torch| {check['max_abs_diff']:.2e}, "
                         f"{check['same_prediction']}/{check['images']} same predictions")
        for vid, by_split in records.items():
            entry = store.get(vid)
            entry.onnx = {**entry.onnx, **by_split}
        store.set_field("onnx_export", {"opset": OPSET, "torch": torch.__version__,
                                        "onnxruntime": onnxruntime.__version__,
                                        "images": int(len(pixels))})
    except BaseException:
        for path in written:  # new files only: the manifest on disk points at none of them
            path.unlink(missing_ok=True)
        raise
    for relative in before - graph_files(store.manifest):  # replaced by this export
        (store.directory / relative).unlink(missing_ok=True)
    return records
