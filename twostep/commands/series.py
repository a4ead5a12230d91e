"""`twostep series show DIR`: print a model series as the paper's table."""

from __future__ import annotations

import argparse
import json

from pipeline.report import format_series_table, series_rows
from pipeline.series import SeriesStore


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="per split: original, step-1 and step-2 elements/bytes")
    show.add_argument("directory", help="a series directory (holding manifest.json)")
    show.add_argument("--max-loss", type=float, default=0.01,
                      help="accuracy loss allowed for the step-2 column (fraction, default 0.01)")
    show.add_argument("--json", action="store_true", help="print the rows as JSON")
    show.add_argument("--variants", action="store_true", help="also list every variant")


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.max_loss <= 1:
        raise ValueError(f"--max-loss must be a fraction in [0, 1], got {args.max_loss}")
    store = SeriesStore.open(args.directory)
    if args.json:
        print(json.dumps(series_rows(store.manifest, args.max_loss), indent=1))
        return 0
    print(format_series_table(store.manifest, args.max_loss))
    if args.variants:
        print(f"\n{'variant':<28}{'step':>5}{'val acc':>9}{'test acc':>9}{'MMACs':>8}  widths")
        for v in store.variants:
            print(f"{v['id']:<28}{v['step']:>5}{v['val_accuracy']:>9.4f}"
                  f"{v['test_accuracy']:>9.4f}{v['macs'] / 1e6:>8.2f}  {v['spec']['widths']}")
    return 0
