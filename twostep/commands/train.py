"""`twostep train`: train a base model from a TOML config and/or flags."""

from __future__ import annotations

import argparse

from pipeline.config import TrainConfig, make_config
from twostep.config_flags import add_config_flags, flag_values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML file with the keys below, or its [train] section "
                        "(configs/demo.toml); flags override it. Keys: docs/config.md")
    add_config_flags(parser.add_argument_group("training (TrainConfig; TOML keys use _)"), TrainConfig)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return make_config(TrainConfig, args.config, "train",
                       **flag_values(args, TrainConfig.model_fields))


def run(args: argparse.Namespace) -> int:
    from pipeline.base_model import train_base

    config = config_from_args(args)
    _, spec, metrics = train_base(config, progress=not args.quiet)
    print(f"model {spec.arch} widths {list(spec.widths)}")
    print(f"test accuracy {metrics['test_accuracy']:.4f} after {metrics['train_seconds']:.0f} s; "
          f"checkpoint {config.out}")
    return 0
