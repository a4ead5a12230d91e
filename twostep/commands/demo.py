"""`twostep demo`: train, prune on Ray Tune, profile, serve, measure, report - on the default."""

from __future__ import annotations

import argparse

from twostep.config_flags import add_config_flags, flag_values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from twostep.demo_config import DemoSettings

    parser.add_argument("--config", help="TOML with [train], [prune], [demo] sections overriding the "
                        "embedded default (see configs/demo.toml, configs/paper.toml, docs/config.md)")
    parser.add_argument("--data-dir", help="Fashion-MNIST IDX files (default: $TWOSTEP_FASHION_MNIST_DIR, "
                        "else /usr/share/datasets/fashion-mnist)")
    add_config_flags(parser.add_argument_group("serving and measurement ([demo] keys; flags override "
                                               "the file)"), DemoSettings)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from twostep.demo import run_demo
    from twostep.demo_config import DemoSettings, load_demo_config

    config = load_demo_config(args.config, data_dir=args.data_dir,
                              demo_flags=flag_values(args, DemoSettings.model_fields))
    run_demo(config, progress=not args.quiet)
    return 0
