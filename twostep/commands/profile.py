"""`twostep profile`: per-layer latency of a checkpoint or of every variant of a series (JSON)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pipeline.checkpoint import load_checkpoint
from pipeline.profiler import derive_profile, profile_document, profile_model, save_profile
from pipeline.series import SeriesStore


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a checkpoint (.safetensors) or a series directory")
    parser.add_argument(
        "-o", "--output",
        help="profile file (default: <series>/profile.json, or <checkpoint>.profile.json)",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per layer (median)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs per layer")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="torch device to time on (default cpu)")
    parser.add_argument(
        "--slowdown", type=float,
        help="also write a device profile derived as this many times slower (<output>.device.json)",
    )


def _device_path(output: Path) -> Path:
    stem = output.name[: -len(".json")] if output.name.endswith(".json") else output.name
    return output.with_name(f"{stem}.device.json")


def _models(path: Path):
    """(variant id, model, spec) for a checkpoint file or for every variant of a series."""
    if path.is_file() and path.name != "manifest.json":
        model, spec, _ = load_checkpoint(path)
        yield "base", model, spec
        return
    from tqdm import tqdm

    store = SeriesStore.open(path.parent if path.name == "manifest.json" else path)
    for vid in tqdm(store.ids(), desc="profile", unit="variant"):
        model, spec, _ = store.load_model(vid)
        yield vid, model, spec


def run(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} is neither a checkpoint nor a series directory")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise ValueError(f"unknown --device {args.device!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device!r} asked for, but CUDA is not available here")
    if args.slowdown is not None and not 0 < args.slowdown <= 1e6:
        raise ValueError(f"--slowdown must be in (0, 1e6], got {args.slowdown}")
    if args.output:
        output = Path(args.output)
    elif path.is_dir():
        output = path / "profile.json"
    else:
        output = path.with_name(f"{path.stem}.profile.json")
    variants = {}
    for vid, model, spec in _models(path):
        variants[vid] = profile_model(
            model, spec, args.batch_size, args.warmup, args.repeats, device
        )
    doc = profile_document(variants, args.batch_size, args.warmup, args.repeats, device)
    save_profile(output, doc)
    for vid, entry in variants.items():
        gap = entry["total_ms"] - entry["whole_ms"]
        print(
            f"{vid}: sum of layers {entry['total_ms']:.3f} ms, one forward "
            f"{entry['whole_ms']:.3f} ms (gap {gap:+.3f} ms)"
        )
    print(f"wrote {output}")
    if args.slowdown is not None:
        device_output = _device_path(output)
        save_profile(device_output, derive_profile(doc, args.slowdown))
        print(f"wrote {device_output} (device = {args.slowdown:g} x this machine)")
    return 0
