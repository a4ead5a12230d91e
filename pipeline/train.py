"""Training and evaluation loops (each sets its own train/eval mode on its first line)."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.data import DataInfo, ImageSet, iterate_batches
from pipeline.device import model_device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; returns a torch generator for data order/augmentation."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_threads(threads: int) -> None:
    """Use `threads` intra-op threads (0 keeps torch's default)."""
    if threads:
        torch.set_num_threads(threads)


def make_optimizer(
    model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4
) -> torch.optim.SGD:
    return torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
        nesterov=momentum > 0,
    )


def train_one_epoch(
    model: nn.Module,
    data: ImageSet,
    info: DataInfo,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    batch_size: int = 128,
    augmented: bool = True,
    label_smoothing: float = 0.0,
    step_hook: Callable[[], None] | None = None,
    max_batches: int = 0,
    progress: str | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """One pass over `data`; returns mean loss and training accuracy.

    Args:
        step_hook: called after every optimizer step (e.g. a per-step LR scheduler).
        max_batches: stop after this many batches (0 = the whole epoch).
        progress: a description for a progress bar, or None for none.
        loss_fn: (logits, images, labels) -> loss, instead of cross-entropy (e.g. distillation).
    """
    model.train()
    device = model_device(model)
    cross_entropy = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    total_loss, correct, seen = 0.0, 0, 0
    n_batches = math.ceil(len(data) / batch_size)
    if max_batches:
        n_batches = min(n_batches, max_batches)
    batches = iterate_batches(data, info, batch_size, True, generator, augmented)
    bar = tqdm(total=n_batches, desc=progress, leave=False, disable=progress is None)
    for i, (x, y) in enumerate(batches):
        if i == n_batches:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = loss_fn(logits, x, y) if loss_fn is not None else cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        if step_hook is not None:
            step_hook()
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        bar.update(1)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    bar.close()
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1)}


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageSet, info: DataInfo, batch_size: int = 512) -> float:
    """Top-1 accuracy (a fraction) of `model` in eval mode on `data`."""
    model.eval()
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    device = model_device(model)
    correct = 0
    for x, y in iterate_batches(data, info, batch_size):
        correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
    return correct / len(data)


def fit(
    model: nn.Module,
    train: ImageSet,
    val: ImageSet,
    info: DataInfo,
    epochs: int,
    lr: float,
    generator: torch.Generator,
    batch_size: int = 128,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    augmented: bool = True,
    label_smoothing: float = 0.0,
    schedule: str = "onecycle",
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> list[dict[str, float]]:
    """Train for `epochs` with SGD and a one-cycle (or constant) LR; returns per-epoch history."""
    if schedule not in ("onecycle", "constant"):
        raise ValueError(f"unknown LR schedule {schedule!r}; choose onecycle or constant")
    optimizer = make_optimizer(model, lr, momentum, weight_decay)
    steps = epochs * math.ceil(len(train) / batch_size)
    hook = None
    if schedule == "onecycle" and steps:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=steps, pct_start=0.25, div_factor=10,
            final_div_factor=100,
        )
        hook = scheduler.step
    history = []
    for epoch in range(epochs):
        start = time.perf_counter()
        stats = train_one_epoch(
            model, train, info, optimizer, generator, batch_size, augmented, label_smoothing,
            step_hook=hook, progress=f"epoch {epoch + 1}/{epochs}" if progress else None,
        )
        stats["val_accuracy"] = evaluate(model, val, info) if len(val) else float("nan")
        stats["seconds"] = time.perf_counter() - start
        history.append(stats)
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}: loss {stats['loss']:.4f}  train acc "
                f"{stats['accuracy']:.4f}  val acc {stats['val_accuracy']:.4f}  "
                f"({stats['seconds']:.0f} s)")
    return history
