"""Benchmark the codec on real feature maps: VGG-16 (width 0.25) on Fashion-MNIST test images.

Per split point: head compute time at batch 1 (measured with the profiler), encode+decode time of
one feature map, compression ratio of the whole 8-bit + lz4 frame over raw float32, and lz4
throughput; then selection time for 300 candidates.

    .venv/bin/python bench/bench_codec_splits.py [--checkpoint runs/bench-train/vgg16-w025.safetensors]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_codec import measure_codec  # noqa: E402
from bench_selection import _median_us, random_candidates  # noqa: E402

from pipeline.checkpoint import load_checkpoint  # noqa: E402
from pipeline.codec import CodecConfig  # noqa: E402
from pipeline.cost import Link  # noqa: E402
from pipeline.data import DataInfo, load_splits, normalize  # noqa: E402
from pipeline.profiler import profile_model  # noqa: E402
from pipeline.selection import CandidateTable  # noqa: E402
from pipeline.split import split_points  # noqa: E402
from pipeline.split_bytes import stage_outputs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/bench-train/vgg16-w025.safetensors")
    parser.add_argument("--images", type=int, default=50, help="test images per split")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, spec, meta = load_checkpoint(args.checkpoint)
    info = DataInfo.from_dict(meta["data"])
    test = load_splits("fashion-mnist", meta["train"]["data_dir"], 0.0, test_subset=args.images).test
    images = normalize(test.images, info)
    profile = profile_model(model, spec, batch_size=1, warmup=5, repeats=30)
    outputs = stage_outputs(model, images, split_points(spec)[:-1])
    config = CodecConfig(bits=8)
    print(f"{spec.arch} width 0.25, {args.images} real Fashion-MNIST test images, 8-bit + lz4, "
          "1 thread, batch 1")
    print(f"{'split':<8}{'elements':>9}{'f32 B':>8}{'frame B':>9}{'ratio':>7}{'enc+dec ms':>11}"
          f"{'head ms':>9}{'codec/head':>11}{'lz4 MB/s':>9}")
    for split, batch in outputs.items():
        stats = [measure_codec(t[None].numpy(), config, args.repeats) for t in batch[:10]]
        frames = [measure_codec(t[None].numpy(), config, 1)["frame_bytes"] for t in batch]
        codec_ms = float(np.median([s["encode_ms"] + s["decode_ms"] for s in stats]))
        head_ms = profile["head_ms"][split]
        lz4 = float(np.median([s["lz4_compress_mb_s"] for s in stats]))
        raw = stats[0]["raw_bytes"]
        print(f"{split:<8}{stats[0]['elements']:>9}{raw:>8}{np.mean(frames):>9.0f}"
              f"{raw / np.mean(frames):>6.1f}x{codec_ms:>11.3f}{head_ms:>9.3f}"
              f"{(codec_ms / head_ms if head_ms else float('inf')):>10.2f}x{lz4:>9.0f}")
    candidates = random_candidates(300)
    table = CandidateTable.from_candidates(candidates)
    link = Link(1e6, 5.0)
    us = _median_us(lambda: table.select(link, accuracy_floor=0.85), 2000)
    print(f"selection over 300 candidates: {us:.1f} us per call (median of 2000)")


if __name__ == "__main__":
    main()
