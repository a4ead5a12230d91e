"""Channel importance: first-order Taylor (Molchanov et al. 2017, as in the 2-step paper) or L1.

A channel of a group is scored by the first-order change of the loss when it is zeroed wherever
the group carries it: activation x gradient at the output of every BatchNorm of the group (one
per VGG conv; every block of a ResNet stage's residual stream; expansion and depthwise conv of
a MobileNetV2 block), summed over those members. At a BatchNorm followed by a ReLU this equals
the term after the ReLU. No surgery happens here.
"""

from __future__ import annotations

import contextlib
import heapq
from collections.abc import Callable, Iterator

import torch
from torch import nn

from pipeline.data import DataInfo, ImageSet, iterate_batches
from pipeline.models.layout import Layout
from pipeline.models.registry import arch_layout
from pipeline.models.staged import StagedNet

CRITERIA = ("taylor", "l1")


def normalize_per_layer(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Absolute value, then divide by the layer's L2 norm (layers become comparable)."""
    out = {}
    for name, s in scores.items():
        s = s.abs()
        norm = torch.linalg.vector_norm(s)
        out[name] = s / norm if norm > 0 else torch.full_like(s, 1.0 / max(len(s), 1) ** 0.5)
    return out


def _layout(model: StagedNet) -> Layout:
    return arch_layout(model.arch, model.input_size)


@contextlib.contextmanager
def _taylor_hooks(
    model: StagedNet, groups: list[str], sums: dict[str, torch.Tensor]
) -> Iterator[None]:
    """Accumulate mean(activation x gradient) per channel of each group's BatchNorm outputs into
    `sums`."""
    handles = []

    def attach(group: str) -> Callable:
        def forward_hook(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
            def grad_hook(grad: torch.Tensor) -> None:
                # (b, c, h, w) -> (c,): summed over space (a group's BatchNorms may run at
                # different sides: MobileNetV2's expansion and strided depthwise conv), mean over batch
                term = (output.detach() * grad).sum(dim=(2, 3)).mean(dim=0)
                sums[group] = sums.get(group, torch.zeros_like(term)) + term

            output.register_hook(grad_hook)
            # torchvision's blocks add the shortcut and apply ReLU in place: they get a copy, so
            # the activation read above stays the BatchNorm's own output
            return output.clone()

        return forward_hook

    layout = _layout(model)
    try:
        for group in groups:
            for conv in layout.members(group):
                handles.append(model.get_submodule(conv.bn).register_forward_hook(attach(group)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def taylor_scores(
    model: StagedNet, data: ImageSet, info: DataInfo, generator: torch.Generator,
    num_batches: int = 10, batch_size: int = 64, layers: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Raw (signed, accumulated) Taylor terms per channel of each group (`layers`: all groups).

    The model is in train mode for the backward passes (as during fine-tuning), but no weight is
    changed: gradients are cleared afterwards.
    """
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    layers = layers or list(_layout(model).groups)
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


def l1_scores(model: StagedNet, layers: list[str] | None = None) -> dict[str, torch.Tensor]:
    """L1 norm of each channel's filter weights, summed over the convs of its group: a
    data-free baseline criterion."""
    layout = _layout(model)
    scores = {}
    for group in layers or layout.groups:
        scores[group] = sum(model.get_submodule(conv.path).weight.detach().abs().sum(dim=(1, 2, 3)).cpu()
                            for conv in layout.members(group))
    return scores


def rank_filters(
    model: StagedNet, data: ImageSet, info: DataInfo, generator: torch.Generator,
    criterion: str = "taylor", num_batches: int = 10, batch_size: int = 64,
    layers: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-group importance of every channel, L2-normalised within each group (higher = keep)."""
    if criterion == "taylor":
        raw = taylor_scores(model, data, info, generator, num_batches, batch_size, layers)
    elif criterion == "l1":
        raw = l1_scores(model, layers)
    else:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    return normalize_per_layer(raw)


def penalize_cost(
    scores: dict[str, torch.Tensor], cost_per_filter: dict[str, float], weight: float
) -> dict[str, torch.Tensor]:
    """Molchanov et al.'s FLOPs regularisation: score - weight * (filter cost / costliest filter's
    cost), so that, at equal importance, filters that cost more go first (weight 0 = the plain
    criterion). The cost is a filter's MACs or its modelled time (`pipeline.steps.filter_costs`)."""
    if weight < 0:
        raise ValueError(f"MAC weight must be >= 0, got {weight}")
    if weight == 0:
        return scores
    largest = max(cost_per_filter[name] for name in scores)
    if largest <= 0:  # nothing to price (every filter costs nothing): the plain criterion
        return scores
    return {name: s - weight * cost_per_filter[name] / largest for name, s in scores.items()}


def lowest_filters(
    scores: dict[str, torch.Tensor], count: int, min_width: int = 1, round_to: int = 1,
) -> dict[str, list[int]]:
    """The `count` globally lowest-scored filters, never leaving a layer below `min_width`.

    With `round_to` > 1 (hardware-aligned pruning) filters leave a group in blocks that keep its
    width a multiple of `round_to`: see `lowest_blocks`.

    Returns:
        layer -> sorted filter indices to remove (layers with nothing removed are omitted).
    """
    if round_to > 1:
        return lowest_blocks(scores, count, min_width, round_to)
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


def aligned_floor(min_width: int, round_to: int) -> int:
    """The narrowest width a rounded cut may leave: the smallest multiple of `round_to` that is
    at least `min_width` (and at least `round_to`: a group never goes to zero)."""
    return round_to * max(1, -(-min_width // round_to))


def group_blocks(scores: torch.Tensor, min_width: int, round_to: int) -> list[tuple[float, list[int]]]:
    """The blocks in which a group of width w = len(scores) may lose channels, in the order it
    loses them: first its w mod `round_to` lowest channels (so that it becomes a multiple), then
    `round_to` at a time, lowest first, while it stays at or above `aligned_floor`. Each block
    is (mean score of its channels, their indices). A group at or below the floor has none: it
    keeps its width, even when that is not a multiple."""
    width = len(scores)
    floor = aligned_floor(min_width, round_to)
    order = sorted(range(width), key=lambda i: (float(scores[i]), i))
    blocks, start = [], width % round_to
    if start and width - start >= floor:
        blocks.append(order[:start])
    elif start:
        return []  # narrower than the floor once aligned: left as it is
    while width - start - round_to >= floor:
        blocks.append(order[start:start + round_to])
        start += round_to
    return [(float(scores[block].mean()), block) for block in blocks]


def lowest_blocks(
    scores: dict[str, torch.Tensor], count: int, min_width: int = 1, round_to: int = 8,
) -> dict[str, list[int]]:
    """At least `count` low-scored filters removed in aligned blocks (`group_blocks`): every
    group it cuts is left at a multiple of `round_to`, at or above `aligned_floor`.

    Blocks are taken globally by their mean score (the first-order loss per channel removed),
    each group's in order, until `count` filters are chosen; the last block may overshoot
    `count` by less than `round_to`. Choosing more never un-chooses a block (`removals_within`
    bisects on `count`).
    """
    if round_to < 1:
        raise ValueError(f"round_to must be >= 1, got {round_to}")
    pending = {name: group_blocks(s, min_width, round_to) for name, s in scores.items()}
    heap = [(blocks[0][0], name, 0) for name, blocks in pending.items() if blocks]
    heapq.heapify(heap)
    chosen: dict[str, list[int]] = {}
    removed = 0
    while heap and removed < count:
        _, name, k = heapq.heappop(heap)
        block = pending[name][k][1]
        chosen.setdefault(name, []).extend(block)
        removed += len(block)
        if k + 1 < len(pending[name]):
            heapq.heappush(heap, (pending[name][k + 1][0], name, k + 1))
    return {name: sorted(indices) for name, indices in chosen.items()}
