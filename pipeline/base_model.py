"""Train the base (unpruned) model from a `TrainConfig` and save it as a checkpoint."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from torch import nn

from pipeline.checkpoint import save_checkpoint
from pipeline.config import TrainConfig, write_config
from pipeline.data import Splits, load_splits
from pipeline.device import resolve_device
from pipeline.models.registry import ArchSpec, build, make_spec
from pipeline.train import evaluate, fit, seed_everything, set_threads


def load_data(config: TrainConfig) -> Splits:
    return load_splits(
        config.dataset, config.data_dir, config.val_fraction, config.train_subset,
        config.test_subset, config.seed,
    )


def train_base(
    config: TrainConfig, splits: Splits | None = None, progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> tuple[nn.Module, ArchSpec, dict]:
    """Train the model `config` describes and save it to `config.out` (plus the config beside).

    Returns:
        (model in eval mode, its spec, metrics with val/test accuracy, history and wall time).
    """
    set_threads(config.threads)
    generator = seed_everything(config.seed)
    splits = splits or load_data(config)
    info = splits.info
    spec = make_spec(config.arch, config.width, info.in_channels, info.num_classes, info.input_size)
    model = build(spec).to(resolve_device(config.device))
    start = time.perf_counter()
    history = fit(
        model, splits.train, splits.val, info, config.epochs, config.lr, generator,
        config.batch_size, config.momentum, config.weight_decay, config.augment,
        config.label_smoothing, progress=progress, log=log,
    )
    metrics = {
        "val_accuracy": evaluate(model, splits.val, info) if len(splits.val) else None,
        "test_accuracy": evaluate(model, splits.test, info),
        "train_seconds": time.perf_counter() - start,
        "history": history,
    }
    out = Path(config.out)
    meta = {"data": info.to_dict(), "train": config.model_dump(mode="json"), **metrics}
    save_checkpoint(out, model, spec, meta)
    write_config(config, out.with_suffix(".config.json"))
    return model, spec, metrics
