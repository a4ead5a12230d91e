"""`twostep profile`: per-layer latency of a checkpoint or of every variant of a series (JSON)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.profile_paths import device_profile_of, series_edge_profile
from pipeline.runtime import DEFAULT_RUNTIME, RUNTIMES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a checkpoint (.safetensors) or a series directory")
    parser.add_argument(
        "-o", "--output",
        help="profile file (default: <series>/profile.json, or <checkpoint>.profile.json)",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per layer (median)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs per layer")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads of the runtime (default 1, as a Serve replica runs)")
    parser.add_argument("--runtime", choices=RUNTIMES, default=DEFAULT_RUNTIME,
                        help=f"time the models as this runtime runs them (default {DEFAULT_RUNTIME}, "
                             "as twostep serve runs them)")
    parser.add_argument("--idle-ms", type=float, default=0.0,
                        help="idle time before each timed call, as between a server's requests "
                             "(default 0)")
    parser.add_argument("--device", default="cpu", help="torch device to time on (default cpu)")
    parser.add_argument(
        "--slowdown", type=float,
        help="also write a device profile derived as this many times slower (<output>.device.json)",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from pipeline.checkpoint import load_checkpoint
    from pipeline.profile_series import profile_as_served
    from pipeline.profiler import derive_profile, profile_document, save_profile

    path = Path(args.path)
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} is neither a checkpoint nor a series directory")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if not 0 <= args.idle_ms <= 10_000:
        raise ValueError(f"--idle-ms must be in [0, 10000], got {args.idle_ms}")
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise ValueError(f"unknown --device {args.device!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device!r} asked for, but CUDA is not available here")
    if args.runtime == "onnxruntime" and device.type != "cpu":
        raise ValueError("--runtime onnxruntime times the CPU: leave --device at cpu")
    if args.slowdown is not None and not 0 < args.slowdown <= 1e6:
        raise ValueError(f"--slowdown must be in (0, 1e6], got {args.slowdown}")
    series = path.is_dir() or path.name == "manifest.json"
    if args.output:
        output = Path(args.output)
    elif series:
        output = series_edge_profile(path if path.is_dir() else path.parent)
    else:
        output = path.with_name(f"{path.stem}.profile.json")
    if series:
        from tqdm import tqdm

        from pipeline.profile_series import profile_series
        from pipeline.series import SeriesStore

        store = SeriesStore.open(path if path.is_dir() else path.parent)
        with tqdm(total=len(store.ids()), desc="profile", unit="variant") as bar:
            doc = profile_series(store, args.runtime, args.threads, args.warmup, args.repeats,
                                 args.idle_ms, progress=lambda _: bar.update(),
                                 batch_size=args.batch_size, device=args.device)
    else:
        torch.set_num_threads(args.threads)
        model, spec, _ = load_checkpoint(path)
        entry = profile_as_served(model, spec, args.runtime, None, args.batch_size, args.warmup,
                                  args.repeats, args.threads, args.idle_ms, device)
        doc = profile_document({"base": entry}, args.batch_size, args.warmup, args.repeats, device,
                               args.runtime, args.idle_ms)
    save_profile(output, doc)
    for vid, entry in doc["variants"].items():
        gap = entry["total_ms"] - entry["whole_ms"]
        print(f"{vid}: sum of layers {entry['total_ms']:.3f} ms, one forward "
              f"{entry['whole_ms']:.3f} ms (gap {gap:+.3f} ms)")
    print(f"wrote {output} ({args.runtime}, {args.threads} thread(s))")
    if args.slowdown is not None:
        device_output = device_profile_of(output)
        save_profile(device_output, derive_profile(doc, args.slowdown))
        print(f"wrote {device_output} (device = {args.slowdown:g} x this machine)")
    return 0
