"""Split points of a model: head and tail modules, tensor shapes, analytic MAC counts.

A split point names the tensor sent from device to edge: `input` (the raw image), the output of
a conv+BN+ReLU (`conv3_2`) or of a pool (`pool3`), or `output` (everything on the device; only
the logits leave it).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pipeline.models.registry import ArchSpec
from pipeline.models.vgg import VGG, stage_names


def split_points(spec: ArchSpec) -> list[str]:
    """All split points of `spec` in forward order, `input` first and `output` last."""
    return ["input", *stage_names(spec.arch), "output"]


def check_split(spec: ArchSpec, split: str) -> None:
    if split not in split_points(spec):
        raise ValueError(
            f"unknown split point {split!r} for {spec.arch}; "
            f"split points are {', '.join(split_points(spec))}"
        )


def pruned_layer(spec: ArchSpec, split: str) -> str | None:
    """The conv whose filters set the size of the tensor at `split` (None for input/output).

    A split after a pool is set by the last conv before that pool.
    """
    check_split(spec, split)
    if split in ("input", "output"):
        return None
    if split.startswith("conv"):
        return split
    block = int(split[len("pool"):])
    return [n for n in spec.conv_names if n.startswith(f"conv{block}_")][-1]


@dataclass(frozen=True)
class StageCost:
    """One stage: its name (the split point after it), output shape and MACs."""

    name: str
    out_shape: tuple[int, ...]
    macs: int


def stage_costs(spec: ArchSpec) -> list[StageCost]:
    """Per-stage output shape (without batch) and multiply-accumulates, analytically.

    A 3x3 conv costs 9 * C_in * C_out * H * W MACs; the linear layer in * out; BN, ReLU and
    pooling are counted as zero MACs.
    """
    costs = [StageCost("input", (spec.in_channels, spec.input_size, spec.input_size), 0)]
    channels, side = spec.in_channels, spec.input_size
    width = spec.width_of()
    for name in stage_names(spec.arch):
        if name.startswith("conv"):
            macs = 9 * channels * width[name] * side * side
            channels = width[name]
        else:
            macs = 0
            side //= 2
        costs.append(StageCost(name, (channels, side, side), macs))
    in_features = channels * side * side
    costs.append(StageCost("output", (spec.num_classes,), in_features * spec.num_classes))
    return costs


def split_shape(spec: ArchSpec, split: str) -> tuple[int, ...]:
    """Shape of the tensor at `split`, without the batch dimension."""
    check_split(spec, split)
    return next(c.out_shape for c in stage_costs(spec) if c.name == split)


def split_elements(spec: ArchSpec, split: str) -> int:
    n = 1
    for d in split_shape(spec, split):
        n *= d
    return n


def head_tail_macs(spec: ArchSpec, split: str) -> tuple[int, int]:
    """(MACs on the device, MACs on the edge) when splitting at `split`."""
    check_split(spec, split)
    costs = stage_costs(spec)
    index = next(i for i, c in enumerate(costs) if c.name == split)
    head = sum(c.macs for c in costs[: index + 1])
    return head, sum(c.macs for c in costs) - head


def total_macs(spec: ArchSpec) -> int:
    return sum(c.macs for c in stage_costs(spec))


def split_model(model: VGG, split: str) -> tuple[nn.Sequential, nn.Sequential]:
    """(head, tail) sharing `model`'s modules; tail(head(x)) computes exactly model(x)."""
    stages = model.ordered_stages()
    names = ["input"] + [n for n, _ in stages]
    if split not in names:
        raise ValueError(f"unknown split point {split!r}; split points are {', '.join(names)}")
    index = names.index(split)
    head = nn.Sequential(*[m for _, m in stages[:index]])
    tail = nn.Sequential(*[m for _, m in stages[index:]])
    return head, tail


def macs_per_filter(spec: ArchSpec) -> dict[str, int]:
    """MACs saved by removing one filter of each conv layer: its own 3x3 kernel over its
    output map, plus its slice of the next conv (or of the classifier)."""
    costs = {c.name: c for c in stage_costs(spec)}
    names = spec.conv_names
    widths = spec.width_of()
    saved = {}
    for i, name in enumerate(names):
        in_channels = widths[names[i - 1]] if i else spec.in_channels
        side = costs[name].out_shape[1]
        own = 9 * in_channels * side * side
        if i + 1 < len(names):
            nxt = costs[names[i + 1]]
            downstream = 9 * widths[names[i + 1]] * nxt.out_shape[1] * nxt.out_shape[2]
        else:
            final_side = spec.input_size // 32
            downstream = spec.num_classes * final_side * final_side
        saved[name] = own + downstream
    return saved
