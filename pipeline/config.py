"""Typed job configs: one declaration per knob.

Each field here is the single source of its TOML key, its CLI flag (help text and default from
the field, see `twostep/config_flags.py`), its validation (the error names the key) and its entry
in the JSON schema of `docs/config.md`. Configs are frozen; `replace` makes a validated copy.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from pipeline.atomic import write_json_atomic
from pipeline.catalog import ARCHS, DATASETS, DEBIAN_FASHION_MNIST_DIR, DEFAULT_FASHION_MNIST_DIR
from pipeline.cost import parse_bandwidth

T = TypeVar("T", bound="ConfigModel")

# A bandwidth below this is almost surely a number meant in other units (`1` for 1 Mbit/s).
MIN_CONFIG_BANDWIDTH_BPS = 1e3


def _bandwidth(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"cannot read bandwidth {value!r}")
    bps = parse_bandwidth(value)
    if bps < MIN_CONFIG_BANDWIDTH_BPS:
        raise ValueError(f"bandwidth {value!r} is {bps:g} bit/s; a bare number is bit/s, so give "
                         "a unit (e.g. 1mbit, 250kbit)")
    return bps


# Bits per second, from a number (bit/s) or a string with a unit: 2.5e6, 250kbit, 1mbit, 1gbit.
Bandwidth = Annotated[float, BeforeValidator(_bandwidth), WithJsonSchema({
    "anyOf": [{"type": "number", "minimum": MIN_CONFIG_BANDWIDTH_BPS},
              {"type": "string"}],
    "description": "bits per second, or a number with a unit: 250kbit, 1mbit, 1gbit"})]


def _comma_list(value: Any) -> Any:
    """A comma-separated string (a CLI flag) as a list; lists and tuples pass through."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def CommaList(item: type) -> Any:  # noqa: N802 - reads as a type in annotations
    return Annotated[tuple[item, ...], BeforeValidator(_comma_list)]


# Keys that changed, with what replaces them (said when an old file uses them).
RENAMED_KEYS = {"bandwidths_mbit": "bandwidths (bit/s, or with a unit: [\"100kbit\", \"1mbit\"])"}


class ConfigError(ValueError):
    """A bad config value or key; the message names it."""


class ConfigModel(BaseModel):
    """Frozen, strict about unknown keys, validated on every change."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    def replace(self: T, **changes: Any) -> T:
        """A validated copy with `changes` (ConfigError naming a bad key or value)."""
        return build_config(type(self), {**self.model_dump(), **changes})


_BOUNDS = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"),
           "less_than": ("<", "lt"), "less_than_equal": ("<=", "le")}


def _describe(cls: type[ConfigModel], error: dict) -> str:
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"])
    key = key.removeprefix(".")
    value = error.get("input")
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown config key {key!r}"
    if kind == "missing":
        return f"{key} is required (flag --{key.replace('_', '-')})"
    if kind in _BOUNDS:
        field = cls.model_fields.get(str(error["loc"][0])) if len(error["loc"]) == 1 else None
        bounds = {type(m).__name__: m for m in (field.metadata if field else [])}
        if ("Gt" in bounds or "Ge" in bounds) and ("Lt" in bounds or "Le" in bounds):
            low = f"({bounds['Gt'].gt}" if "Gt" in bounds else f"[{bounds['Ge'].ge}"
            high = f"{bounds['Lt'].lt})" if "Lt" in bounds else f"{bounds['Le'].le}]"
            return f"{key} must be in {low}, {high}, got {value!r}"
        operator, name = _BOUNDS[kind]
        return f"{key} must be {operator} {error['ctx'][name]}, got {value!r}"
    if kind == "literal_error":
        return f"{key} must be one of {error['ctx']['expected']}, got {value!r}"
    message = error["msg"].removeprefix("Value error, ")
    if kind == "value_error":
        return message if not key or key in message else f"{key}: {message}"
    return f"{key}: {message}, got {value!r}"


def build_config(cls: type[T], values: dict[str, Any], where: str = "") -> T:
    """`cls` from `values`; unknown keys and bad values raise one ConfigError naming them."""
    known = set(cls.model_fields)
    unknown = sorted(set(values) - known)
    prefix = f"{where}: " if where else ""
    if unknown:
        hints = "".join(f"; {key} is now {RENAMED_KEYS[key]}" for key in unknown if key in RENAMED_KEYS)
        raise ConfigError(f"{prefix}unknown config key(s) {unknown}{hints}; known keys are "
                          f"{sorted(known)}")
    try:
        return cls.model_validate(values)
    except ValidationError as err:
        errors = err.errors()
        # a list whose items failed is also "too short" once they are dropped: say it once
        bad_items = {e["loc"][0] for e in errors if len(e["loc"]) > 1}
        errors = [e for e in errors if not (e["type"] == "too_short" and e["loc"][0] in bad_items)]
        raise ConfigError(prefix + "; ".join(_describe(cls, e) for e in errors)) from None


def check_device(name: str) -> str:
    if name not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", name):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return name


def _check_dataset(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return name


_DATASET = Field("fashion-mnist", description=f"dataset: {', '.join(DATASETS)}")
_DATA_DIR = Field(DEFAULT_FASHION_MNIST_DIR, description="dataset directory (default: "
                  "$TWOSTEP_FASHION_MNIST_DIR where set, else the Debian package's)",
                  # the documented default, whatever the environment of whoever generates the docs
                  json_schema_extra={"default": DEBIAN_FASHION_MNIST_DIR})
_DEVICE = Field("auto", description="where torch runs: auto (the GPU if present), cpu, cuda, cuda:N")
_THREADS = Field(0, ge=0, le=1024, description="torch threads (0 = torch's default)")


class TrainConfig(ConfigModel):
    """Training of a base model (the [train] section). Defaults: VGG-16 at width 0.25."""

    dataset: str = _DATASET
    data_dir: str = _DATA_DIR
    arch: str = Field("vgg16", description=f"model: {', '.join(ARCHS)}")
    width: float = Field(0.25, gt=0.0, le=16.0, description="width multiplier of every layer")
    epochs: int = Field(8, ge=0, le=10_000, description="training epochs")
    batch_size: int = Field(128, ge=1, le=65_536, description="images per SGD step")
    lr: float = Field(0.05, gt=0.0, le=10.0, description="peak learning rate of the one-cycle schedule")
    momentum: float = Field(0.9, ge=0.0, le=1.0, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0.0, le=1.0, description="SGD weight decay")
    label_smoothing: float = Field(0.0, ge=0.0, le=0.5, description="label smoothing of the loss")
    val_fraction: float = Field(0.1, ge=0.0, le=0.9,
                                description="fraction of the training images held out for validation")
    train_subset: int = Field(0, ge=0, le=10**9, description="keep this many training images (0 = all)")
    test_subset: int = Field(0, ge=0, le=10**9, description="keep this many test images (0 = all)")
    augment: bool = Field(True, description="random crops and flips while training")
    seed: int = Field(0, description="seed of the split, the initialisation and the batch order")
    threads: int = _THREADS
    device: str = _DEVICE
    out: str = Field("runs/train/model.safetensors", description="checkpoint path (.safetensors)")

    _dataset = field_validator("dataset")(_check_dataset)
    _device = field_validator("device")(check_device)

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, name: str) -> str:
        if name not in ARCHS:
            raise ValueError(f"unknown model {name!r}; choose one of {', '.join(ARCHS)}")
        return name


class PruneConfig(ConfigModel):
    """2-step pruning of a base checkpoint into a model series (the [prune] section)."""

    base: str = Field("runs/train/model.safetensors", description="base checkpoint to prune")
    out: str = Field("runs/series", description="series directory (resumed when it exists)")
    dataset: str = _DATASET
    data_dir: str = _DATA_DIR
    val_fraction: float = Field(0.1, gt=0.0, le=0.9,
                                description="fraction of the training images held out for validation")
    train_subset: int = Field(0, ge=0, le=10**9, description="fine-tune on this many images (0 = all)")
    val_subset: int = Field(0, ge=0, le=10**9, description="judge iterations on this many (0 = all)")
    test_subset: int = Field(0, ge=0, le=10**9, description="report accuracy on this many (0 = all)")
    seed: int = Field(0, description="seed of the split and the batch order")
    threads: int = _THREADS
    device: str = _DEVICE
    batch_size: int = Field(128, ge=1, le=65_536, description="images per SGD step")
    criterion: Literal["taylor", "l1"] = Field(
        "taylor", description="filter ranking: taylor (activation x gradient) or l1 (weight norm)")
    mac_weight: float = Field(0.0, ge=0.0, le=100.0,
                              description="subtract this x (a filter's cost / the costliest filter's) "
                                          "from its score, so compute goes first (0 = off)")
    step1_cost: Literal["macs", "latency"] = Field(
        "macs", description="a filter's cost for mac_weight: its MACs, or its time on the device "
                            "runtime (a layer model fitted on the base's ONNX Runtime profile: per MAC "
                            "and per weight, `twostep series layers`)")
    rank_batches: int = Field(10, ge=1, le=100_000, description="batches averaged per ranking")
    finetune_lr: float = Field(0.01, gt=0.0, le=10.0,
                               description="fine-tuning learning rate (cosine-decayed to 0)")
    momentum: float = Field(0.9, ge=0.0, le=1.0, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0.0, le=1.0, description="SGD weight decay")
    augment: bool = Field(True, description="random crops and flips while fine-tuning")
    min_width: int = Field(1, ge=1, le=8192, description="filters every conv keeps at least")
    distill_weight: float = Field(0.0, ge=0.0, le=1.0, description="weight of knowledge "
                                  "distillation from the unpruned model (0 = plain cross-entropy)")
    distill_temperature: float = Field(4.0, gt=0.0, le=100.0, description="distillation temperature")
    step1_divisor: int = Field(16, ge=1, le=100_000, description="step 1 removes total "
                               "filters / this per iteration (the paper: 16)")
    step1_finetune_epochs: float = Field(1.0, ge=0.0, le=1000.0,
                                         description="fine-tuning epochs per step-1 iteration")
    step1_recovery_epochs: float = Field(0.0, ge=0.0, le=1000.0, description="an iteration under "
                                         "the budget gets this many more epochs and is judged again")
    step1_budget: float = Field(0.01, ge=0.0, le=1.0, description="validation accuracy step 1 "
                                "may lose (fraction; 0.01 = 1 point)")
    step1_target_mac_reduction: float = Field(0.0, ge=0.0, le=1e6, description="stop step 1 at "
                                              "this MAC reduction (0 = no target; else above 1)")
    step1_max_iterations: int = Field(40, ge=0, le=100_000, description="step-1 iterations at most")
    step1_round_to: int = Field(8, ge=1, le=1024, description="step 1 leaves every channel group "
                                "it cuts at a multiple of this (blocked kernels of device "
                                "runtimes run odd widths padded; a group at or below it keeps "
                                "its width; 1 = any width)")
    step1_continue_from: str | None = Field(None, description="a series whose step 1 stopped at "
                                            "its MAC target: its base and step-1 iterations start a "
                                            "new series at out, and step 1 goes on from the last of "
                                            "them to this config's larger target")
    step1_time_calls: bool = Field(True, description="at the end of step 1, time every step-1 "
                                   "model's ONNX Runtime call against the base's (batch 1, one "
                                   "thread, an idle gap before each call); `twostep series show` "
                                   "reports it")
    step2_splits: CommaList(str) = Field((), description="split points for step 2, comma-separated "
                                         "on the command line (empty = all)")
    step2_steps: int = Field(16, ge=1, le=1000, description="log-spaced widths of the layer before a split")
    step2_finetune_epochs: float = Field(0.5, ge=0.0, le=1000.0,
                                         description="fine-tuning epochs per step-2 iteration")
    step2_round_to: int = Field(1, ge=1, le=1024, description="step-2 widths above this are "
                                "multiples of it; below it the ladder goes on to min_width "
                                "(1 = any width: the bytes at a split count more than the time)")
    codec_bits: int = Field(8, ge=4, le=8, description="bits per value of the coded feature map")
    codec_per_channel: bool = Field(False, description="quantise each channel with its own range")
    bytes_images: int = Field(200, ge=1, le=100_000, description="test images whose coded frames "
                              "are measured per split")

    _dataset = field_validator("dataset")(_check_dataset)
    _device = field_validator("device")(check_device)

    @field_validator("step1_target_mac_reduction")
    @classmethod
    def _target(cls, value: float) -> float:
        if 0 < value <= 1:
            raise ValueError(f"step1_target_mac_reduction must be 0 (no target) or above 1, got {value}")
        return value


# The sections of a config file (configs/demo.toml): each verb reads its own.
SECTIONS = ("train", "prune", "demo")


def read_toml(path: str | os.PathLike) -> dict:
    """A TOML file as a dict; ConfigError for a missing file or bad TOML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from err


def file_section(path: str | os.PathLike, section: str) -> dict:
    """`section` of a sectioned file ([train], [prune], [demo]), or all of a flat file."""
    document = read_toml(path)
    if not any(isinstance(document.get(name), dict) for name in SECTIONS):
        return document
    unknown = sorted(set(document) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section(s) or key(s) {unknown} in {path}; a sectioned file "
                          f"has only [{'], ['.join(SECTIONS)}]")
    return document.get(section, {})


def make_config(cls: type[T], path: str | os.PathLike | None = None, section: str | None = None,
                **overrides: Any) -> T:
    """`cls` from its defaults, then a TOML file (its `section` when the file has sections),
    then the non-None `overrides` (command-line flags)."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(file_section(path, section) if section else read_toml(path))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return build_config(cls, values)


def write_config(config: ConfigModel, path: str | os.PathLike) -> None:
    """Write the resolved config as JSON next to an output."""
    write_json_atomic(path, config.model_dump(mode="json"), indent=2, sort_keys=True)
