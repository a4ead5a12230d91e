"""`twostep bench`: strategies (a)-(f) over a bandwidth x device-slowdown grid, measured.

    twostep bench [--series runs/demo/series] [--bandwidths 100kbit,1mbit,...] [--slowdowns 1,5,10]
"""

from __future__ import annotations

import argparse

from twostep.cli import UsageError
from twostep.config_flags import add_config_flags, flag_values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from twostep.bench.config import BenchConfig

    add_config_flags(parser, BenchConfig)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from pipeline.config import build_config
    from pipeline.series import is_series
    from twostep.bench.config import BenchConfig
    from twostep.bench.run import run_bench

    config = build_config(BenchConfig, flag_values(args, BenchConfig.model_fields))
    if not is_series(config.series):
        default = BenchConfig.model_fields["series"].default
        hint = " (run `twostep demo` first, or give --series)" if config.series == default else ""
        raise UsageError(f"--series {config.series!r} is not a model series directory{hint}")
    run_bench(config, progress=not args.quiet)
    return 0
