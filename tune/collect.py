"""Trial checkpoints -> series manifest (pure: no Ray import).

A trial reports one checkpoint per iteration: a directory holding

    variant.safetensors  the model (`pipeline.checkpoint` format: weights + JSON spec, no pickle)
    variant.json         {"format": "twostep-trial-checkpoint/1", "entry": <manifest entry>,
                          "stop_reason": <why the procedure ended here, or null>}

where the entry is what `describe_variant` measured in the trial (accuracies, MACs, bytes per
split). The driver is the only writer of the series store: a `VariantSink` per trial adds each
checkpoint as it arrives, in iteration order, so the manifest grows incrementally and a partial
series is always usable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from pipeline.atomic import write_json_atomic
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.models.registry import ArchSpec
from pipeline.series import Measured, SeriesError, SeriesStore, Variant, measured, variant_id

TRIAL_FORMAT = "twostep-trial-checkpoint/1"
WEIGHTS_FILE = "variant.safetensors"
ENTRY_FILE = "variant.json"


def write_trial_checkpoint(directory: str | os.PathLike, model: nn.Module, spec: ArchSpec,
                           entry: Measured, stop_reason: str | None = None) -> Path:
    """Write one iteration's model and manifest entry into `directory` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_checkpoint(directory / WEIGHTS_FILE, model, spec, {"variant": entry.id})
    document = {"format": TRIAL_FORMAT, "entry": entry.to_json(), "stop_reason": stop_reason}
    write_json_atomic(directory / ENTRY_FILE, document, indent=None, sort_keys=True)
    return directory


def read_trial_checkpoint(directory: str | os.PathLike) -> tuple[nn.Module, ArchSpec, Measured, str | None]:
    """(model, spec, entry, stop_reason) of a trial checkpoint; SeriesError if it is not one."""
    directory = Path(directory)
    try:
        document = json.loads((directory / ENTRY_FILE).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SeriesError(f"{directory} is not a trial checkpoint: {err}") from err
    if not isinstance(document, dict) or document.get("format") != TRIAL_FORMAT:
        raise SeriesError(f"{directory}/{ENTRY_FILE} is not a {TRIAL_FORMAT} document")
    if not isinstance(document.get("entry"), dict):
        raise SeriesError(f"{directory}/{ENTRY_FILE} holds no manifest entry")
    entry = measured(document["entry"], f"{directory}/{ENTRY_FILE}")
    model, spec, _ = load_checkpoint(directory / WEIGHTS_FILE)
    expected = variant_id(spec.arch, entry.step, entry.iteration, entry.layer)
    if entry.id != expected:
        raise SeriesError(f"trial checkpoint {directory}: entry id {entry.id!r} does not match "
                          f"its step/iteration/layer ({expected!r})")
    return model, spec, entry, document.get("stop_reason")


class VariantSink:
    """Adds the checkpoints of one trial to a store, strictly in iteration order.

    A checkpoint that repeats an iteration (a trial restored from an older checkpoint) replaces
    the recorded variant; one that skips an iteration is refused, so the store never holds a
    ladder with a hole (resuming counts the contiguous iterations).
    """

    def __init__(self, store: SeriesStore, step: int, layer: str | None, next_iteration: int):
        self.store = store
        self.step = step
        self.layer = layer
        self.next_iteration = next_iteration
        self.added: list[str] = []

    def add(self, directory: str | os.PathLike) -> Variant:
        model, spec, entry, _ = read_trial_checkpoint(directory)
        if entry.step != self.step or entry.layer != self.layer:
            raise SeriesError(f"checkpoint {entry.id} is not step {self.step} of "
                              f"{self.layer or 'the whole network'}")
        iteration = entry.iteration
        if iteration > self.next_iteration:
            raise SeriesError(f"checkpoint {entry.id} skips iteration {self.next_iteration}; "
                              "refusing a hole in the series")
        full = self.store.add_variant(model, spec, entry)
        self.next_iteration = iteration + 1
        self.added.append(full.id)
        return full


def copy_variants(source: SeriesStore, target: SeriesStore, ids: list[str]) -> None:
    """Add variants of `source` (weights re-checked on load) to `target`, in the given order."""
    for vid in ids:
        model, spec, entry = source.load_model(vid)
        fields = {k: v for k, v in entry.to_json().items() if k not in ("spec", "weights", "sha256")}
        target.add_variant(model, spec, fields)


def sort_variants(store: SeriesStore, key) -> None:
    """Rewrite the manifest with its variants ordered by `key` (weights are untouched)."""
    ordered = sorted(store.variants, key=key)
    if [v.id for v in ordered] != store.ids():
        store.reorder(ordered)


def append_run_log(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line (a phase of a Tune run: trials, failures, iterations) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def read_run_log(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

