"""`twostep eval`: test accuracy of a checkpoint on its dataset (or another directory)."""

from __future__ import annotations

import argparse

from pipeline.checkpoint import load_checkpoint
from pipeline.data import DataInfo, load_splits
from pipeline.train import evaluate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a .safetensors file written by `twostep train`")
    parser.add_argument("--dataset", help="override the dataset recorded in the checkpoint")
    parser.add_argument("--data-dir", help="override the data directory recorded in the checkpoint")
    parser.add_argument("--test-subset", type=int, default=0, help="evaluate on this many images")


def run(args: argparse.Namespace) -> int:
    model, spec, meta = load_checkpoint(args.checkpoint)
    train = meta.get("train", {})
    dataset = args.dataset or train.get("dataset", "fashion-mnist")
    data_dir = args.data_dir or train.get("data_dir")
    if data_dir is None:
        raise ValueError("the checkpoint records no data directory: pass --data-dir")
    splits = load_splits(dataset, data_dir, val_fraction=0.0, test_subset=args.test_subset,
                         input_size=spec.input_size, channels=spec.in_channels)
    if splits.info.in_channels != spec.in_channels:
        raise ValueError(f"dataset {dataset} has {splits.info.in_channels} channels but the model "
                         f"expects {spec.in_channels}")
    info = DataInfo.from_dict(meta["data"]) if "data" in meta else splits.info
    accuracy = evaluate(model, splits.test, info)
    print(f"{args.checkpoint}: test accuracy {accuracy:.4f} on {len(splits.test)} images")
    return 0
