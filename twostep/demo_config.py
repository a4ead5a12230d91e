"""The demo's embedded default and its TOML form: [train], [prune] and [demo] sections.

Each section overrides the demo's defaults (not the bare config defaults), so a file only names
what it changes. `configs/demo.toml` spells the embedded default out; `configs/paper.toml` is
the paper's configuration for a GPU cluster.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import PruneConfig, TrainConfig, make_config


@dataclass(frozen=True)
class DemoSettings:
    """Serving and measurement part of the demo."""

    out: str = "runs/demo"
    bandwidths_mbit: tuple[float, ...] = (0.1, 0.25, 1.0, 10.0)
    requests_per_bandwidth: int = 12
    slowdown: float = 5.0
    accuracy_drop: float = 0.03
    ray_address: str = "local"
    ingress: str = "auto"  # of a Ray session the demo starts (serve/ingress.py)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    port: int = 0

    def __post_init__(self):
        object.__setattr__(self, "bandwidths_mbit", tuple(float(b) for b in self.bandwidths_mbit))
        if not self.bandwidths_mbit or any(not 0 < b <= 1e5 for b in self.bandwidths_mbit):
            raise ValueError(f"bandwidths_mbit must be values in (0, 1e5], got {self.bandwidths_mbit}")
        if not 1 <= self.requests_per_bandwidth <= 10_000:
            raise ValueError(f"requests_per_bandwidth must be in 1..10000, got {self.requests_per_bandwidth}")
        if not 0 < self.slowdown <= 1e4:
            raise ValueError(f"slowdown must be in (0, 1e4], got {self.slowdown}")
        if not 0 <= self.accuracy_drop <= 1:
            raise ValueError(f"accuracy_drop must be a fraction in [0, 1], got {self.accuracy_drop}")
        if self.ingress not in ("auto", "haproxy", "proxy"):
            raise ValueError(f"ingress must be auto, haproxy or proxy, got {self.ingress!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")


def _demo_train(out: str) -> TrainConfig:
    return TrainConfig(arch="vgg16", width=0.25, epochs=3, train_subset=12000, test_subset=2000,
                       out=f"{out}/base.safetensors")


def _demo_prune(out: str) -> PruneConfig:
    return PruneConfig(
        base=f"{out}/base.safetensors", out=f"{out}/series", train_subset=6000, val_subset=1000,
        test_subset=1000, rank_batches=5, step1_finetune_epochs=0.5, step1_max_iterations=5,
        step1_budget=0.01, mac_weight=0.0,
        step2_splits=("conv1_1", "pool1", "pool2", "pool3", "pool4", "pool5"), step2_steps=5,
        step2_finetune_epochs=0.25, bytes_images=100, threads=1,
    )


@dataclass(frozen=True)
class DemoConfig:
    train: TrainConfig
    prune: PruneConfig
    demo: DemoSettings = field(default_factory=DemoSettings)


def _overlay(cls: type, base: object, section: dict, where: str) -> object:
    try:
        return make_config(cls, None, **{**dataclasses.asdict(base), **section})
    except ValueError as err:
        raise ValueError(f"[{where}]: {err}") from None


def load_demo_config(path: str | os.PathLike | None = None, out: str | None = None,
                     data_dir: str | None = None) -> DemoConfig:
    """The embedded default, overridden by the sections of a TOML file and then by `out` and
    `data_dir` (the dataset directory of both training and pruning)."""
    sections: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {str(path)!r} does not exist")
        try:
            sections = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"config file {path} is not valid TOML: {err}") from err
        unknown = set(sections) - {"train", "prune", "demo"}
        if unknown:
            raise ValueError(f"unknown section(s) {sorted(unknown)} in {path}; use [train], [prune], [demo]")
    if data_dir is not None:
        for name in ("train", "prune"):
            sections[name] = {**sections.get(name, {}), "data_dir": str(data_dir)}
    demo_section = dict(sections.get("demo", {}))
    if out is not None:
        demo_section["out"] = out
    try:
        demo = DemoSettings(**{**dataclasses.asdict(DemoSettings()), **demo_section})
    except TypeError as err:
        raise ValueError(f"[demo]: {err}") from None
    train = _overlay(TrainConfig, _demo_train(demo.out), sections.get("train", {}), "train")
    prune_defaults = dataclasses.replace(_demo_prune(demo.out), base=train.out)
    prune = _overlay(PruneConfig, prune_defaults, sections.get("prune", {}), "prune")
    return DemoConfig(train, prune, demo)
