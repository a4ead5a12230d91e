"""`twostep train`: train a base model from a TOML config and/or flags."""

from __future__ import annotations

import argparse

from pipeline.base_model import train_base
from pipeline.config import TrainConfig, make_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML file with TrainConfig keys, or its [train] section "
                        "(configs/demo.toml); flags override it")
    parser.add_argument("--dataset", help="fashion-mnist (default), cifar10 or folder")
    parser.add_argument("--data-dir", help="dataset directory (default: the Debian package's)")
    parser.add_argument("--arch", help="vgg11, vgg13, vgg16 (default) or vgg19")
    parser.add_argument("--width", type=float, help="width multiplier (default 0.25)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--label-smoothing", type=float)
    parser.add_argument("--val-fraction", type=float)
    parser.add_argument("--train-subset", type=int, help="keep this many training images (0=all)")
    parser.add_argument("--test-subset", type=int, help="keep this many test images (0=all)")
    parser.add_argument("--no-augment", dest="augment", action="store_false", default=None)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--threads", type=int, help="torch threads (0 = default)")
    parser.add_argument("--device", help="auto (default: the GPU if present), cpu, cuda, cuda:N")
    parser.add_argument("--out", help="checkpoint path (.safetensors)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    keys = ("dataset", "data_dir", "arch", "width", "epochs", "batch_size", "lr", "weight_decay",
            "label_smoothing", "val_fraction", "train_subset", "test_subset", "augment", "seed",
            "threads", "device", "out")
    return make_config(TrainConfig, args.config, "train", **{k: getattr(args, k) for k in keys})


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    _, spec, metrics = train_base(config, progress=not args.quiet)
    print(f"model {spec.arch} widths {list(spec.widths)}")
    print(f"test accuracy {metrics['test_accuracy']:.4f} after {metrics['train_seconds']:.0f} s; "
          f"checkpoint {config.out}")
    return 0
