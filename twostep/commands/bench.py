"""`twostep bench`: strategies (a)-(f) over a bandwidth x device-slowdown grid, measured.

    twostep bench [--series runs/demo/series] [--bandwidths 0.1,0.25,...] [--slowdowns 1,5,10]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from twostep.cli import UsageError

DEFAULT_SERIES = "runs/demo/series"


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise UsageError(f"{what} is empty")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--series", default=DEFAULT_SERIES,
                        help=f"model series directory (default {DEFAULT_SERIES}, made by `twostep demo`)")
    parser.add_argument("--out", default="runs/bench", help="results directory (default runs/bench)")
    parser.add_argument("--bandwidths", default="0.1,0.25,0.5,1,2,5,10,100",
                        help="uplink rates in Mbit/s, comma-separated")
    parser.add_argument("--slowdowns", default="1,5,10",
                        help="device = this many times slower than the edge, comma-separated")
    parser.add_argument("--requests", type=int, default=20, help="requests per strategy and point")
    parser.add_argument("--max-loss", type=float, default=0.01,
                        help="twostep's accuracy floor: the unpruned model's test accuracy minus this")
    parser.add_argument("--link", choices=("auto", "shaped", "emulated"), default="auto",
                        help="shaped: namespaces + tc (root); emulated: sleeps; auto: shaped if permitted")
    parser.add_argument("--jpeg-quality", type=int, default=90)
    parser.add_argument("--ingress", choices=("auto", "haproxy", "proxy"), default="auto",
                        help="the edge's HTTP ingress: HAProxy where available (default auto)")
    parser.add_argument("--runtime", choices=("torch", "onnxruntime"), default="onnxruntime",
                        help="what runs the models on the device and the edge, and what the edge "
                             "profile times (default onnxruntime)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from twostep.bench.run import BenchConfig, run_bench

    if not (Path(args.series) / "manifest.json").is_file():
        hint = " (run `twostep demo` first, or give --series)" if args.series == DEFAULT_SERIES else ""
        raise UsageError(f"--series {args.series!r} is not a model series directory{hint}")
    config = BenchConfig(
        series=args.series, out=args.out, bandwidths_mbit=_floats(args.bandwidths, "--bandwidths"),
        slowdowns=_floats(args.slowdowns, "--slowdowns"), requests=args.requests,
        max_loss=args.max_loss, link=args.link, jpeg_quality=args.jpeg_quality, ingress=args.ingress,
        runtime=args.runtime)
    run_bench(config, progress=not args.quiet)
    return 0
