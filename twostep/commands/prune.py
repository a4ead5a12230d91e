"""`twostep prune`: 2-step pruning of a base checkpoint into a model series."""

from __future__ import annotations

import argparse

from pipeline.config import PruneConfig, make_config
from pipeline.report import format_series_table

FLAGS = {
    "base": str, "out": str, "dataset": str, "data_dir": str, "train_subset": int,
    "val_subset": int, "test_subset": int, "seed": int, "threads": int, "batch_size": int,
    "criterion": str, "mac_weight": float, "rank_batches": int, "finetune_lr": float, "step1_divisor": int,
    "step1_finetune_epochs": float, "step1_budget": float, "step1_target_mac_reduction": float,
    "step1_max_iterations": int, "step2_steps": int, "step2_finetune_epochs": float,
    "codec_bits": int, "bytes_images": int,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML file with PruneConfig keys (flags override it)")
    parser.add_argument("--step", choices=("1", "2", "both"), default="both",
                        help="which step(s) to run (default both; 2 needs a finished step 1)")
    for key, kind in FLAGS.items():
        parser.add_argument("--" + key.replace("_", "-"), type=kind, dest=key)
    parser.add_argument("--step2-splits", help="comma-separated split points (default: all)")
    parser.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                        help="run on Ray Tune: no value starts a local Ray session, "
                             "'auto' or HOST:PORT joins a cluster")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> PruneConfig:
    overrides = {key: getattr(args, key) for key in FLAGS}
    if args.step2_splits:
        overrides["step2_splits"] = [s.strip() for s in args.step2_splits.split(",") if s.strip()]
    return make_config(PruneConfig, args.config, **overrides)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.ray is not None:
        from tune.launch import launch_pruning

        store = launch_pruning(config, steps=args.step, address=args.ray,
                               progress=not args.quiet)
    else:
        from pipeline.prune_job import prune_series

        store = prune_series(config, steps=args.step, progress=not args.quiet)
    print(format_series_table(store.manifest, config.step1_budget))
    print(f"series written to {config.out}")
    return 0
