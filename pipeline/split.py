"""Split points of a model: head and tail modules, tensor shapes, analytic MAC counts.

A split point names the tensor sent from device to edge: `input` (the raw image), the output of
a stage of the architecture's layout (a VGG conv+BN+ReLU `conv3_2` or pool `pool3`; a ResNet
residual block `layer2_1`; a MobileNetV2 block `block6`; the `stem`, `last` and `pool` stages),
or `output` (everything on the device; only the logits leave it).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pipeline.models.layout import conv_macs, conv_macs_per_channel
from pipeline.models.registry import ArchSpec
from pipeline.models.staged import StagedNet


def split_points(spec: ArchSpec) -> list[str]:
    """All split points of `spec` in forward order, `input` first and `output` last."""
    return ["input", *(stage.name for stage in spec.layout.stages)]


def check_split(spec: ArchSpec, split: str) -> None:
    if split not in split_points(spec):
        raise ValueError(
            f"unknown split point {split!r} for {spec.arch}; "
            f"split points are {', '.join(split_points(spec))}"
        )


def pruned_layer(spec: ArchSpec, split: str) -> str | None:
    """The channel group whose width sets the size of the tensor at `split` (None for
    input/output): a VGG conv (a pool passes on the last conv's), a ResNet stage's residual
    stream, a MobileNetV2 stage's projected channels."""
    check_split(spec, split)
    if split == "input":
        return None
    return spec.layout.stage(split).out_group


@dataclass(frozen=True)
class StageCost:
    """One stage: its name (the split point after it), output shape and MACs."""

    name: str
    out_shape: tuple[int, ...]
    macs: int


def stage_costs(spec: ArchSpec) -> list[StageCost]:
    """Per-stage output shape (without batch) and multiply-accumulates, analytically.

    A conv costs k * k * C_in * C_out * H_out * W_out MACs (C_in = 1 for a depthwise conv), the
    linear layer in * out; BatchNorm, activations, residual adds and pooling count zero.
    """
    widths = spec.width_of()
    costs = [StageCost("input", (spec.in_channels, spec.input_size, spec.input_size), 0)]
    for stage in spec.layout.stages:
        macs = sum(conv_macs(conv, widths, spec.in_channels) for conv in stage.convs)
        if stage.linear is not None:
            macs += widths[stage.linear.in_group] * stage.linear.side ** 2 * spec.num_classes
            shape: tuple[int, ...] = (spec.num_classes,)
        else:
            shape = (widths[stage.out_group], stage.side, stage.side)
        costs.append(StageCost(stage.name, shape, macs))
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


def split_model(model: StagedNet, split: str) -> tuple[nn.Sequential, nn.Sequential]:
    """(head, tail) sharing `model`'s modules; tail(head(x)) computes exactly model(x)."""
    stages = model.ordered_stages()
    names = ["input"] + [n for n, _ in stages]
    if split not in names:
        raise ValueError(f"unknown split point {split!r}; split points are {', '.join(names)}")
    index = names.index(split)
    head = nn.Sequential(*[m for _, m in stages[:index]])
    tail = nn.Sequential(*[m for _, m in stages[index:]])
    return head, tail


def weights_per_filter(spec: ArchSpec) -> dict[str, int]:
    """Weights removed with one channel of each group (as `macs_per_filter`, per output pixel
    once: a conv's weights do not grow with its output's size)."""
    return _saved_per_channel(spec, per_output_pixel=True)


def macs_per_filter(spec: ArchSpec) -> dict[str, int]:
    """MACs saved by removing one channel of each group: its share of every conv it is an
    output or input channel of, and its columns of the classifier."""
    return _saved_per_channel(spec, per_output_pixel=False)


def _saved_per_channel(spec: ArchSpec, per_output_pixel: bool) -> dict[str, int]:
    """Per group, the MACs (or, `per_output_pixel`, the weights) one of its channels accounts
    for; the classifier's are the same count either way."""
    widths = spec.width_of()
    layout = spec.layout
    saved = {}
    for group in spec.group_names:
        total = sum(conv_macs_per_channel(conv, widths, spec.in_channels, group)
                    // (conv.side * conv.side if per_output_pixel else 1) for conv in layout.convs())
        if layout.linear.in_group == group:
            total += spec.num_classes * layout.linear.side ** 2
        saved[group] = total
    return saved
