"""The demo's embedded default and its TOML form: [train], [prune] and [demo] sections.

Each section overrides the demo's defaults (not the bare config defaults), so a file only names
what it changes. `configs/demo.toml` spells the embedded default out; `configs/paper.toml` is
the paper's configuration for a GPU cluster.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from pipeline.config import (
    Bandwidth,
    CommaList,
    ConfigError,
    ConfigModel,
    PruneConfig,
    TrainConfig,
    build_config,
    read_toml,
)
from serve.process.ingress import Ingress


class DemoSettings(ConfigModel):
    """Serving and measurement part of the demo (the [demo] section)."""

    out: str = Field("runs/demo", description="run directory: base model, series, results")
    bandwidths: CommaList(Bandwidth) = Field(
        ("100kbit", "250kbit", "1mbit", "10mbit"), min_length=1,
        description="emulated uplink rates to send requests at: bit/s, or with a unit (250kbit, "
                    "1mbit); comma-separated on the command line")
    requests_per_bandwidth: int = Field(12, ge=1, le=10_000, description="requests measured per rate")
    slowdown: float = Field(5.0, gt=0.0, le=1e4, description="the device is this many times "
                            "slower than this machine (the edge)")
    accuracy_drop: float = Field(0.01, ge=0.0, le=1.0, description="the router's accuracy floor: "
                                 "the base model's test accuracy minus this (0.01 = 1 point)")
    ray_address: str = Field("local", description="local (start a Ray session), auto or HOST:PORT "
                             "(join a cluster)")
    ingress: Ingress = Field(
        "auto", description="HTTP ingress of a Ray session the demo starts: HAProxy where available")
    cpus_per_trial: float = Field(1.0, gt=0.0, le=1024.0, description="CPUs per pruning trial")
    gpus_per_trial: float = Field(0.0, ge=0.0, le=64.0, description="GPUs per pruning trial")
    port: int = Field(0, ge=0, le=65535, description="HTTP port of the served series (0 = a free one)")
    trace: str | None = Field(None, description="also replay this measured link trace ('time_s "
                              "Mbit/s' lines or a mahimahi file) live on the served series and draw "
                              "it (trace.png): the link, the router's estimate, choice and latency, "
                              "the oracle's latency")
    trace_start_s: float = Field(0.0, ge=0.0, description="where in the trace the replay starts")
    trace_seconds: float = Field(60.0, gt=0.0, le=3600.0, description="how long the replay lasts")
    trace_fps: float = Field(5.0, gt=0.0, le=100.0, description="images per second during the replay")


# What the demo changes from the bare defaults: a base model trained on all of Fashion-MNIST
# for 5 epochs (~92% test accuracy, about 4 minutes on 2 cores), pruned on subsets.
DEMO_TRAIN = {"arch": "vgg16", "width": 0.25, "epochs": 5, "train_subset": 0, "test_subset": 0}
DEMO_PRUNE = {
    "train_subset": 12000, "val_subset": 1000, "test_subset": 2000, "rank_batches": 5,
    "step1_finetune_epochs": 0.5, "step1_max_iterations": 5, "step1_budget": 0.01,
    "step2_splits": ("conv1_1", "pool1", "pool2", "pool3", "pool4", "pool5"), "step2_steps": 5,
    "step2_finetune_epochs": 0.25, "bytes_images": 100, "threads": 1,
}


@dataclass(frozen=True)
class DemoConfig:
    train: TrainConfig
    prune: PruneConfig
    demo: DemoSettings = field(default_factory=DemoSettings)


def load_demo_config(path: str | os.PathLike | None = None, out: str | None = None,
                     data_dir: str | None = None, demo_flags: dict[str, Any] | None = None
                     ) -> DemoConfig:
    """The embedded default, overridden by the sections of a TOML file, then by `demo_flags`
    ([demo] keys from the command line), `out` and `data_dir` (the dataset directory of both
    training and pruning)."""
    sections: dict = read_toml(path) if path is not None else {}
    unknown = set(sections) - {"train", "prune", "demo"}
    if unknown:
        raise ConfigError(f"unknown section(s) {sorted(unknown)} in {path}; use [train], [prune], [demo]")
    for name in ("train", "prune", "demo"):
        if not isinstance(sections.get(name, {}), dict):
            raise ConfigError(f"[{name}] in {path} must be a table of keys")
    if data_dir is not None:
        for name in ("train", "prune"):
            sections[name] = {**sections.get(name, {}), "data_dir": str(data_dir)}
    demo_values = {**sections.get("demo", {}), **(demo_flags or {})}
    if out is not None:
        demo_values["out"] = out
    demo = build_config(DemoSettings, demo_values, "[demo]")
    train = build_config(TrainConfig, {**DEMO_TRAIN, "out": f"{demo.out}/base.safetensors",
                                       **sections.get("train", {})}, "[train]")
    prune = build_config(PruneConfig, {**DEMO_PRUNE, "base": train.out, "out": f"{demo.out}/series",
                                       **sections.get("prune", {})}, "[prune]")
    return DemoConfig(train, prune, demo)
