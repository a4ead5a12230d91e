"""A tiny model series built in seconds, for the serving tests, the benchmark and smoke runs.

Synthetic Fashion-MNIST-like data (each class a bright block in its own cell of a 4x3 grid on a
noisy 28x28 image, zero-padded to 32x32), a VGG-11 at 1/16 width trained for a few epochs, one
step-1 variant (the lowest-L1 quarter of every layer removed) and two step-2 ladders (conv3_2 and
conv5_2 narrowed), each fine-tuned briefly. Entries carry real test accuracies and measured frame
bytes, like those of `pipeline.prune_job`, so selection has true trade-offs to work with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.codec import CodecConfig
from pipeline.data import DataInfo, ImageSet, normalize
from pipeline.models.registry import ArchSpec, build, make_spec
from pipeline.models.vgg import VGG
from pipeline.series import SeriesStore, variant_id
from pipeline.split import pruned_layer, split_points, total_macs
from pipeline.split_bytes import measure_split_bytes
from pipeline.surgery import remove_filters
from pipeline.taylor import l1_scores
from pipeline.train import evaluate, fit, seed_everything

CLASSES = tuple(f"class-{i}" for i in range(10))


def synthetic_images(n: int, seed: int) -> ImageSet:
    """`n` learnable 1x32x32 uint8 images with labels 0..9."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 60, (n, 28, 28))
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 4)
        images[i, 9 * row + 1: 9 * row + 8, 7 * col: 7 * col + 6] = 250
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2))).astype(np.uint8)
    return ImageSet(torch.from_numpy(padded).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


def _lowest_l1(model: VGG, layers: list[str], keep: dict[str, int]) -> dict[str, list[int]]:
    scores = l1_scores(model, layers)
    return {n: scores[n].argsort()[: len(scores[n]) - keep[n]].tolist() for n in layers
            if keep[n] < len(scores[n])}


def make_tiny_series(
    directory: str | Path,
    epochs: int = 4,
    finetune_epochs: int = 2,
    n_train: int = 400,
    n_test: int = 200,
    seed: int = 0,
) -> SeriesStore:
    """Build the tiny series in `directory` (which must not hold one yet) and return its store.

    Runs on one torch thread: on a small shared machine, more threads are several times slower
    for a model this small.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _build(Path(directory), epochs, finetune_epochs, n_train, n_test, seed)
    finally:
        torch.set_num_threads(threads)


def _build(directory: Path, epochs: int, finetune_epochs: int, n_train: int, n_test: int,
           seed: int) -> SeriesStore:
    generator = seed_everything(seed)
    train, val, test = (synthetic_images(n, seed + k) for k, n in enumerate((n_train, 100, n_test)))
    stats = train.images.float().div(255)
    info = DataInfo("synthetic", 1, 10, 32, (round(stats.mean().item(), 4),),
                    (round(stats.std().item(), 4),), CLASSES)
    codec = CodecConfig()
    byte_images = normalize(test.images[:32], info)
    spec = make_spec("vgg11", 0.0625, in_channels=1)
    store = SeriesStore.create(directory, spec, info.to_dict(),
                               {"bits": codec.bits, "per_channel": codec.per_channel, "compress": True},
                               {"demo": "tests/synthetic_series.py make_tiny_series", "seed": seed})

    def train_for(model: VGG, n_epochs: int, lr: float) -> float:
        if n_epochs:
            fit(model, train, val, info, n_epochs, lr, generator, batch_size=64, augmented=False,
                progress=False, log=None)
        return evaluate(model, val, info)

    def record(model: VGG, spec: ArchSpec, step: int, iteration: int, val_acc: float,
               offered: list[str], layer: str | None = None) -> dict:
        vid = variant_id(spec.arch, step, iteration, layer)
        entry = {
            "id": vid, "step": step, "layer": layer, "split": offered[0] if step == 2 else None,
            "iteration": iteration, "val_accuracy": val_acc,
            "test_accuracy": evaluate(model, test, info), "macs": total_macs(spec),
            "splits": measure_split_bytes(model, spec, byte_images, offered, codec, vid),
        }
        return store.add_variant(model, spec, entry)

    model = build(spec)
    base = record(model, spec, 0, 0, train_for(model, epochs, 0.05), split_points(spec))
    store.set_field("base", base.id)
    widths = spec.width_of()
    keep = {n: max(1, w - w // 4) for n, w in widths.items()}
    model1, spec1 = remove_filters(model, spec, _lowest_l1(model, list(widths), keep))
    step1 = record(model1, spec1, 1, 1, train_for(model1, finetune_epochs, 0.02), split_points(spec1))
    store.set_field("step1", step1.id)
    for layer, ladder in (("conv3_2", (4, 1)), ("conv5_2", (6, 2))):
        offered = [p for p in split_points(spec1) if pruned_layer(spec1, p) == layer]
        current, current_spec = model1, spec1
        for iteration, width in enumerate(ladder, start=1):
            current, current_spec = remove_filters(
                current, current_spec, _lowest_l1(current, [layer], {layer: width}))
            val_acc = train_for(current, finetune_epochs, 0.02)
            record(current, current_spec, 2, iteration, val_acc, offered, layer)
    return store
