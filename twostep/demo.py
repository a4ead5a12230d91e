"""`twostep demo`: the whole system on the embedded default, stage by stage.

1 train (or reuse a cached base model) -> 2 2-step pruning on Ray Tune -> 3 profile every variant
-> 4 serve the series on Ray Serve and send real test images at several emulated bandwidths ->
5 a results table (markdown + JSON) and pictures in the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.base_model import train_base
from pipeline.checkpoint import CheckpointError, read_metadata
from pipeline.config import TrainConfig
from pipeline.profiler import derive_profile, profile_document, profile_model, save_profile
from pipeline.series import SeriesStore
from twostep.demo_config import DemoConfig

Log = Callable[[str], None]


class Stages:
    """Prints a numbered banner per stage with its wall time."""

    def __init__(self, total: int, log: Log):
        self.total, self.log, self.index = total, log, 0
        self.times: dict[str, float] = {}

    def run(self, title: str, fn: Callable[[], object]) -> object:
        self.index += 1
        self.log(f"\n== [{self.index}/{self.total}] {title} ==")
        start = time.perf_counter()
        result = fn()
        self.times[title] = time.perf_counter() - start
        self.log(f"   done in {self.times[title]:.0f} s")
        return result


def cached_base(config: TrainConfig) -> bool:
    """True when `config.out` holds a model trained with exactly this config."""
    try:
        _, meta = read_metadata(config.out)
    except CheckpointError:
        return False
    return meta.get("train") == dataclasses.asdict(config)


def train_stage(config: TrainConfig, progress: bool, log: Log) -> dict:
    if cached_base(config):
        _, meta = read_metadata(config.out)
        log(f"   reusing {config.out} (test accuracy {meta['test_accuracy']:.4f})")
        return {"test_accuracy": meta["test_accuracy"], "cached": True}
    _, _, metrics = train_base(config, progress=progress, log=log)
    return {"test_accuracy": metrics["test_accuracy"], "cached": False}


def prune_stage(config: DemoConfig, progress: bool, log: Log) -> SeriesStore:
    from tune.launch import launch_pruning
    from tune.plan import TrialResources

    return launch_pruning(config.prune, steps="both", address=config.demo.ray_address,
                          progress=progress, resources=TrialResources(cpus=config.demo.cpus_per_trial,
                                                           gpus=config.demo.gpus_per_trial),
                          log=log)


def profile_stage(store: SeriesStore, slowdown: float, log: Log) -> tuple[Path, Path]:
    """Measure every variant on this machine (the edge) and derive the device by `slowdown`."""
    variants = {}
    for vid in store.ids():
        model, spec, _ = store.load_model(vid)
        variants[vid] = {**profile_model(model, spec, batch_size=1, warmup=3, repeats=10),
                         "spec": spec.to_dict()}
    edge = profile_document(variants, batch_size=1, warmup=3, repeats=10)
    edge_path, device_path = store.directory / "profile.json", store.directory / "profile.device.json"
    save_profile(edge_path, edge)
    save_profile(device_path, derive_profile(edge, slowdown))
    log(f"   {len(variants)} variants profiled; device = {slowdown:g} x this machine")
    return edge_path, device_path


def write_json(path: Path, document: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path
