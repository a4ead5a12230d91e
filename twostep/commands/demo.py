"""`twostep demo`: train, prune on Ray Tune, profile, serve, measure, report - on the default."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML with [train], [prune], [demo] sections overriding the "
                        "embedded default (see configs/demo.toml, configs/paper.toml)")
    parser.add_argument("--out", help="run directory (default runs/demo)")
    parser.add_argument("--data-dir", help="Fashion-MNIST IDX files (default: $TWOSTEP_FASHION_MNIST_DIR, "
                        "else /usr/share/datasets/fashion-mnist)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from twostep.demo import run_demo
    from twostep.demo_config import load_demo_config

    run_demo(load_demo_config(args.config, args.out, args.data_dir), progress=not args.quiet)
    return 0
