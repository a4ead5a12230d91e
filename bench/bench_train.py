"""Benchmark: train VGG-16 (width 0.25) on the full Fashion-MNIST training set on this machine.

Target (issue 2): at least 92% test accuracy within 15 minutes on 2 CPU cores.

    .venv/bin/python bench/bench_train.py [--epochs 5] [--out runs/bench-train/vgg16-w025.safetensors]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from pipeline.base_model import train_base
from pipeline.config import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--out", default="runs/bench-train/vgg16-w025.safetensors")
    args = parser.parse_args()
    config = TrainConfig(arch="vgg16", width=0.25, epochs=args.epochs, lr=args.lr,
                         val_fraction=0.0, out=args.out)
    start = time.perf_counter()
    _, spec, metrics = train_base(config, progress=False)
    wall = time.perf_counter() - start
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"VGG-16 width 0.25 ({sum(spec.widths)} filters), full Fashion-MNIST training set "
          f"(60,000 images), {args.epochs} epochs")
    print(f"wall time {wall:.0f} s ({wall / 60:.1f} min), test accuracy {metrics['test_accuracy']:.4f}")
    met = metrics["test_accuracy"] >= 0.92 and wall <= 15 * 60
    print(f"target (>= 92% within 15 min): {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
