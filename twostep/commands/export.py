"""`twostep export SERIES`: ONNX heads and tails of a series' variants, checked against PyTorch
and recorded (path, sha256) in its manifest."""

from __future__ import annotations

import argparse


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError(f"expected a comma-separated list of names, got {text!r}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("series", help="a series directory (holding manifest.json)")
    parser.add_argument("--variants", help="comma-separated variant ids (default: every variant)")
    parser.add_argument("--splits", help="comma-separated split points (default: each variant's "
                                         "offered splits)")
    parser.add_argument("--images", type=int, default=256,
                        help="real test images each graph pair is checked on (default 256)")


def run(args: argparse.Namespace) -> int:
    from pipeline.onnx_export import export_series
    from pipeline.series import SeriesStore
    from pipeline.series_images import series_test_images

    if not 1 <= args.images <= 100_000:
        raise ValueError(f"--images must be in 1..100000, got {args.images}")
    store = SeriesStore.open(args.series)
    pixels, _ = series_test_images(store.manifest, args.images)
    records = export_series(args.series, pixels, _names(args.variants), _names(args.splits),
                            progress=print)
    graphs = sum(bool(r["head"]) + bool(r["tail"]) for by in records.values() for r in by.values())
    worst = max(r["max_abs_diff"] for by in records.values() for r in by.values())
    print(f"exported {graphs} graphs of {len(records)} variant(s) to {args.series}/onnx "
          f"(largest |onnx - torch| {worst:.2e} on {len(pixels)} test images); manifest updated")
    return 0
