"""Filter importance: first-order Taylor (Molchanov et al. 2017, as in the 2-step paper) or L1.

Scores are measured at each conv block's output (after BN and ReLU), the tensor that removing a
filter zeroes for the next layer. No surgery happens here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from pipeline.data import DataInfo, ImageSet, iterate_batches
from pipeline.models.vgg import VGG

CRITERIA = ("taylor", "l1")


def normalize_per_layer(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Absolute value, then divide by the layer's L2 norm (layers become comparable)."""
    out = {}
    for name, s in scores.items():
        s = s.abs()
        norm = torch.linalg.vector_norm(s)
        out[name] = s / norm if norm > 0 else torch.full_like(s, 1.0 / max(len(s), 1) ** 0.5)
    return out


@contextlib.contextmanager
def _taylor_hooks(
    model: VGG, layers: list[str], sums: dict[str, torch.Tensor]
) -> Iterator[None]:
    """Accumulate mean(activation x gradient) per channel of each layer's output into `sums`."""
    handles = []

    def attach(name: str) -> Callable:
        def forward_hook(_module, _inputs, output: torch.Tensor) -> None:
            def grad_hook(grad: torch.Tensor) -> None:
                # (b, c, h, w) -> (c,): the Taylor term averaged over batch and space
                term = (output.detach() * grad).mean(dim=(0, 2, 3))
                sums[name] = sums.get(name, torch.zeros_like(term)) + term

            output.register_hook(grad_hook)

        return forward_hook

    try:
        for name in layers:
            handles.append(model.stages[name].register_forward_hook(attach(name)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def taylor_scores(
    model: VGG, data: ImageSet, info: DataInfo, generator: torch.Generator,
    num_batches: int = 10, batch_size: int = 64, layers: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Raw (signed, accumulated) Taylor terms per filter of each conv layer.

    The model is in train mode for the backward passes (as during fine-tuning), but no weight is
    changed: gradients are cleared afterwards.
    """
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    layers = layers or list(model.conv_blocks())
    # Train-mode passes update BatchNorm running statistics; ranking must not change the model.
    saved = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    model.train()
    sums: dict[str, torch.Tensor] = {}
    loss_fn = nn.CrossEntropyLoss()
    batches = iterate_batches(data, info, batch_size, shuffle=True, generator=generator)
    device = next(model.parameters()).device
    with _taylor_hooks(model, layers, sums):
        for i, (x, y) in enumerate(batches):
            if i == num_batches:
                break
            model.zero_grad(set_to_none=True)
            loss_fn(model(x.to(device)), y.to(device)).backward()
    model.zero_grad(set_to_none=True)
    model.load_state_dict(saved, strict=False)
    return {name: sums[name].cpu() for name in layers}  # backward filled `sums` in reverse order


def l1_scores(model: VGG, layers: list[str] | None = None) -> dict[str, torch.Tensor]:
    """L1 norm of each filter's weights: a data-free baseline criterion."""
    blocks = model.conv_blocks()
    layers = layers or list(blocks)
    return {n: blocks[n].conv.weight.detach().abs().sum(dim=(1, 2, 3)).cpu() for n in layers}


def rank_filters(
    model: VGG, data: ImageSet, info: DataInfo, generator: torch.Generator,
    criterion: str = "taylor", num_batches: int = 10, batch_size: int = 64,
    layers: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-layer importance of every filter, L2-normalised within each layer (higher = keep)."""
    if criterion == "taylor":
        raw = taylor_scores(model, data, info, generator, num_batches, batch_size, layers)
    elif criterion == "l1":
        raw = l1_scores(model, layers)
    else:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    return normalize_per_layer(raw)


def penalize_macs(
    scores: dict[str, torch.Tensor], macs_per_filter: dict[str, int], weight: float
) -> dict[str, torch.Tensor]:
    """Molchanov et al.'s FLOPs regularisation: score - weight * (filter MACs / largest filter
    MACs), so that, at equal importance, filters that cost more compute go first (weight 0 =
    the plain criterion)."""
    if weight < 0:
        raise ValueError(f"MAC weight must be >= 0, got {weight}")
    if weight == 0:
        return scores
    largest = max(macs_per_filter[name] for name in scores)
    return {name: s - weight * macs_per_filter[name] / largest for name, s in scores.items()}


def lowest_filters(
    scores: dict[str, torch.Tensor], count: int, min_width: int = 1
) -> dict[str, list[int]]:
    """The `count` globally lowest-scored filters, never leaving a layer below `min_width`.

    Returns:
        layer -> sorted filter indices to remove (layers with nothing removed are omitted).
    """
    entries = sorted(
        (float(score), name, index)
        for name, s in scores.items()
        for index, score in enumerate(s.tolist())
    )
    removable = {name: len(s) - min_width for name, s in scores.items()}
    chosen: dict[str, list[int]] = {}
    for _, name, index in entries:
        if count == 0:
            break
        if removable[name] > 0:
            chosen.setdefault(name, []).append(index)
            removable[name] -= 1
            count -= 1
    return {name: sorted(indices) for name, indices in chosen.items()}
