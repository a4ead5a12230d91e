"""Frozen job configs with defaults that run the demo, read from TOML and/or overrides.

An unknown key is an error naming it; values are type-checked against the field's default.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pipeline.atomic import write_json_atomic
from pipeline.data import DATASETS, DEFAULT_FASHION_MNIST_DIR
from pipeline.models.registry import ARCHS

T = TypeVar("T")


@dataclass(frozen=True)
class TrainConfig:
    """Training of a base model. The defaults train the demo's VGG-16 at width 0.25."""

    dataset: str = "fashion-mnist"
    data_dir: str = DEFAULT_FASHION_MNIST_DIR
    arch: str = "vgg16"
    width: float = 0.25
    epochs: int = 8
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    val_fraction: float = 0.1
    train_subset: int = 0
    test_subset: int = 0
    augment: bool = True
    seed: int = 0
    threads: int = 0
    device: str = "auto"
    out: str = "runs/train/model.safetensors"

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        if self.arch not in ARCHS:
            raise ValueError(f"unknown model {self.arch!r}; choose one of {', '.join(ARCHS)}")
        _check_range("width", self.width, 0.0, 16.0, low_open=True)
        _check_range("epochs", self.epochs, 0, 10_000)
        _check_range("batch_size", self.batch_size, 1, 65_536)
        _check_range("lr", self.lr, 0.0, 10.0, low_open=True)
        _check_range("momentum", self.momentum, 0.0, 1.0)
        _check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        _check_range("label_smoothing", self.label_smoothing, 0.0, 0.5)
        _check_range("val_fraction", self.val_fraction, 0.0, 0.9)
        _check_range("train_subset", self.train_subset, 0, 10**9)
        _check_range("test_subset", self.test_subset, 0, 10**9)
        _check_range("threads", self.threads, 0, 1024)
        _check_device(self.device)


def _check_device(name: str) -> None:
    if name not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", name):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")


def _check_range(name: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        bound = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bound}{low}, {high}], got {value!r}")


def _coerce(cls: type, key: str, value: Any) -> Any:
    field = next(f for f in dataclasses.fields(cls) if f.name == key)
    default = field.default
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")
        return value
    try:
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            return tuple(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a {type(default).__name__}, got {value!r}") from None
    return str(value) if isinstance(default, str) else value


# The sections of a config file (configs/demo.toml): each verb reads its own.
SECTIONS = ("train", "prune", "demo")


def make_config(cls: type[T], path: str | os.PathLike | None = None, section: str | None = None,
                **overrides: Any) -> T:
    """Build `cls` from defaults, then a TOML file (if given), then non-None overrides. A file
    with sections ([train], [prune], [demo]) gives `cls` its `section`; a flat file, all of it."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {str(path)!r} does not exist")
        try:
            document = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"config file {path} is not valid TOML: {err}") from err
        if section is not None and any(isinstance(document.get(name), dict) for name in SECTIONS):
            unknown = sorted(set(document) - set(SECTIONS))
            if unknown:
                raise ValueError(f"unknown section(s) or key(s) {unknown} in {path}; a sectioned "
                                 f"file has only [{'], ['.join(SECTIONS)}]")
            document = document.get(section, {})
        values.update(document)
    values.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; known keys are {sorted(names)}")
    return cls(**{k: _coerce(cls, k, v) for k, v in values.items()})


def write_config(config: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as JSON next to an output."""
    write_json_atomic(path, dataclasses.asdict(config), indent=2, sort_keys=True)


@dataclass(frozen=True)
class PruneConfig:
    """2-step pruning of a base checkpoint into a model series (defaults: the CPU demo)."""

    base: str = "runs/train/model.safetensors"
    out: str = "runs/series"
    dataset: str = "fashion-mnist"
    data_dir: str = DEFAULT_FASHION_MNIST_DIR
    val_fraction: float = 0.1
    train_subset: int = 0
    val_subset: int = 0
    test_subset: int = 0
    seed: int = 0
    threads: int = 0
    device: str = "auto"
    batch_size: int = 128
    criterion: str = "taylor"
    mac_weight: float = 0.0
    rank_batches: int = 10
    finetune_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True
    min_width: int = 1
    # Knowledge distillation from the unpruned model while fine-tuning (0 = plain cross-entropy).
    distill_weight: float = 0.0
    distill_temperature: float = 4.0
    step1_divisor: int = 16
    step1_finetune_epochs: float = 1.0
    # An iteration under the budget gets this many more epochs and is judged again (0: none).
    step1_recovery_epochs: float = 0.0
    step1_budget: float = 0.01
    step1_target_mac_reduction: float = 0.0
    step1_max_iterations: int = 40
    step2_splits: tuple[str, ...] = ()
    step2_steps: int = 16
    step2_finetune_epochs: float = 0.5
    codec_bits: int = 8
    codec_per_channel: bool = False
    bytes_images: int = 200

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        if self.criterion not in ("taylor", "l1"):
            raise ValueError(f"unknown criterion {self.criterion!r}; choose taylor or l1")
        _check_range("val_fraction", self.val_fraction, 0.0, 0.9, low_open=True)
        for key in ("train_subset", "val_subset", "test_subset"):
            _check_range(key, getattr(self, key), 0, 10**9)
        _check_range("batch_size", self.batch_size, 1, 65_536)
        _check_range("rank_batches", self.rank_batches, 1, 100_000)
        _check_range("mac_weight", self.mac_weight, 0.0, 100.0)
        _check_range("finetune_lr", self.finetune_lr, 0.0, 10.0, low_open=True)
        _check_range("momentum", self.momentum, 0.0, 1.0)
        _check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        _check_range("min_width", self.min_width, 1, 8192)
        _check_range("distill_weight", self.distill_weight, 0.0, 1.0)
        _check_range("distill_temperature", self.distill_temperature, 0.0, 100.0, low_open=True)
        _check_range("step1_divisor", self.step1_divisor, 1, 100_000)
        _check_range("step1_finetune_epochs", self.step1_finetune_epochs, 0.0, 1000.0)
        _check_range("step1_recovery_epochs", self.step1_recovery_epochs, 0.0, 1000.0)
        _check_range("step1_budget", self.step1_budget, 0.0, 1.0)
        _check_range("step1_target_mac_reduction", self.step1_target_mac_reduction, 0.0, 1e6)
        if 0 < self.step1_target_mac_reduction <= 1:
            raise ValueError("step1_target_mac_reduction must be 0 (no target) or above 1, got "
                             f"{self.step1_target_mac_reduction}")
        _check_range("step1_max_iterations", self.step1_max_iterations, 0, 100_000)
        _check_range("step2_steps", self.step2_steps, 1, 1000)
        _check_range("step2_finetune_epochs", self.step2_finetune_epochs, 0.0, 1000.0)
        _check_range("codec_bits", self.codec_bits, 4, 8)
        _check_range("bytes_images", self.bytes_images, 1, 100_000)
        _check_range("threads", self.threads, 0, 1024)
        _check_device(self.device)
        object.__setattr__(self, "step2_splits", tuple(self.step2_splits))
