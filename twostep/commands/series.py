"""`twostep series show DIR`: print a model series as the paper's table; `twostep series time
DIR`: time its step-1 models' device calls against the base's (time per MAC); `twostep series
layers DIR`: where a device call goes, layer by layer (`pipeline.layer_times`)."""

from __future__ import annotations

import argparse
import json

from pipeline import call_time
from pipeline import layer_times as layer_times_module
from pipeline.data import DataInfo
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
    timing = sub.add_parser(
        "time", help="time each step-1 model's ONNX Runtime call against the base's (batch 1, one "
                     "thread, an idle gap before each call) and record it in the manifest")
    timing.add_argument("directory", help="a series directory (holding manifest.json)")
    timing.add_argument("--idle-ms", type=float, default=call_time.IDLE_MS,
                        help=f"idle before each timed call, as between requests (default "
                             f"{call_time.IDLE_MS:g})")
    timing.add_argument("--repeats", type=int, default=call_time.REPEATS,
                        help=f"timed calls per model, round-robin; the median is kept (default "
                             f"{call_time.REPEATS})")
    timing.add_argument("--variants", nargs="+", metavar="ID",
                        help="time these variants against the base (default: every step-1 model)")
    timing.add_argument("--no-save", action="store_true",
                        help="print only; leave the manifest as it is (a series that a running "
                             "`twostep prune` is writing would lose the figures anyway)")
    layers = sub.add_parser(
        "layers", help="where a device call goes: each layer's time under ONNX Runtime's profiler, "
                       "a fitted model (per MAC, per weight, per layer) and each call in its terms")
    layers.add_argument("directory", help="a series directory (holding manifest.json)")
    layers.add_argument("--variants", nargs="+", metavar="ID",
                        help="the first is the reference the model is fitted on (default: the base "
                             "and the kept step-1 model)")
    layers.add_argument("--calls", type=int, default=layer_times_module.CALLS,
                        help=f"calls per model, back to back (default {layer_times_module.CALLS})")
    layers.add_argument("--json", action="store_true", help="print the profiles and the model as JSON")


def run(args: argparse.Namespace) -> int:
    if args.action == "time":
        return time_calls(args)
    if args.action == "layers":
        return layer_times(args)
    if not 0 <= args.max_loss <= 1:
        raise ValueError(f"--max-loss must be a fraction in [0, 1], got {args.max_loss}")
    store = SeriesStore.open(args.directory)
    if args.json:
        print(json.dumps(series_rows(store.manifest, args.max_loss), indent=1))
        return 0
    print(format_series_table(store.manifest, args.max_loss))
    for line in call_time.format_call_times(store.manifest):
        print(line)
    if args.variants:
        print(f"\n{'variant':<28}{'step':>5}{'val acc':>9}{'test acc':>9}{'MMACs':>8}  widths")
        for v in store.variants:
            val, test = (f"{a:>9.4f}" if a is not None else f"{'-':>9}"
                         for a in (v.val_accuracy, v.test_accuracy))
            print(f"{v.id:<28}{v.step:>5}{val}{test}{v.macs / 1e6:>8.2f}  {v.spec['widths']}")
    return 0


def time_calls(args: argparse.Namespace) -> int:
    if not 0 <= args.idle_ms <= 10_000:
        raise ValueError(f"--idle-ms must be in [0, 10000], got {args.idle_ms}")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    store = SeriesStore.open(args.directory)
    for vid in args.variants or ():
        store.get(vid)  # SeriesError naming an unknown id
    document = call_time.step1_call_times(store, args.idle_ms, args.repeats, args.variants)
    if not document["variants"]:
        print(f"{args.directory} has no step-1 model to time")
        return 1
    if not args.no_save:
        store.set_field(call_time.FIELD, document)
    for line in call_time.format_call_times(store.manifest, document):
        print(line)
    return 0


def layer_times(args: argparse.Namespace) -> int:
    if not 10 <= args.calls <= 5_000:
        raise ValueError(f"--calls must be in [10, 5000], got {args.calls}")
    store = SeriesStore.open(args.directory)
    manifest = store.manifest
    variants = args.variants or [manifest.base, *([manifest.step1] if manifest.step1 else [])]
    info = DataInfo.from_dict(manifest.data)
    profiles = []
    for vid in variants:
        model, spec, _ = store.load_model(vid)  # SeriesError naming an unknown id
        profiles.append(layer_times_module.profile_layers(model, spec, info, args.calls, variant=vid))
    fitted = layer_times_module.fit_layer_model(profiles[:1])
    if args.json:
        print(json.dumps({"model": fitted.to_dict(), "profiles": [p.to_dict() for p in profiles]}, indent=1))
        return 0
    for line in layer_times_module.format_layer_report(profiles, fitted):
        print(line)
    return 0
