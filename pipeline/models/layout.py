"""The layout of a network as data: its stages (split points), layers and channel groups.

A *channel group* is a set of channels that must be removed together: the filters of one VGG
conv, the residual stream of a ResNet stage (the stem or shortcut conv and every block's last
conv add into it), the expanded channels of a MobileNetV2 block (expansion conv and depthwise
conv), the projected channels of a MobileNetV2 stage (its blocks' residual adds couple them).
An `ArchSpec` holds one width per group; the layout says which group sets each layer's input
and output channels, so shapes, MACs, scores and surgery all follow from it. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Conv:
    """A conv (with the BatchNorm after it) whose channels belong to groups.

    `in_group` None means the image channels; a depthwise conv has `in_group == out_group`;
    `side` is the spatial side of its output.
    """

    path: str
    bn: str
    in_group: str | None
    out_group: str
    kernel: int
    stride: int
    side: int
    depthwise: bool = False


@dataclass(frozen=True)
class Linear:
    """The classifier: its inputs are `in_group`'s channels flattened over `side` x `side`."""

    path: str
    in_group: str
    side: int


@dataclass(frozen=True)
class Stage:
    """One stage of the forward pass; the split point after it carries its name.

    `out_group` sets the channels of the tensor at that split (None for `output`, the logits);
    `side` is the tensor's spatial side (0 for the logits).
    """

    name: str
    out_group: str | None
    side: int
    convs: tuple[Conv, ...] = ()
    linear: Linear | None = None


@dataclass(frozen=True)
class Layout:
    stages: tuple[Stage, ...]
    groups: tuple[str, ...]  # every channel group, in forward order of first use

    def convs(self) -> list[Conv]:
        return [c for s in self.stages for c in s.convs]

    def members(self, group: str) -> list[Conv]:
        """The convs whose outputs carry `group`'s channels (removing one zeroes all of them)."""
        return [c for c in self.convs() if c.out_group == group]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    @property
    def linear(self) -> Linear:
        return next(s.linear for s in self.stages if s.linear is not None)


def conv_macs(conv: Conv, widths: dict[str, int], in_channels: int) -> int:
    """Multiply-accumulates of one conv at batch 1 (BatchNorm and activations count zero)."""
    cout = widths[conv.out_group]
    cin = 1 if conv.depthwise else (widths[conv.in_group] if conv.in_group else in_channels)
    return conv.kernel * conv.kernel * cin * cout * conv.side * conv.side


def conv_macs_per_channel(conv: Conv, widths: dict[str, int], in_channels: int, group: str) -> int:
    """How many MACs of `conv` one channel of `group` accounts for (MACs are linear in each
    group's width: no conv has its input and output in one group except a depthwise one)."""
    area = conv.kernel * conv.kernel * conv.side * conv.side
    if conv.depthwise:
        return area if conv.out_group == group else 0
    saved = 0
    if conv.out_group == group:
        saved += area * (widths[conv.in_group] if conv.in_group else in_channels)
    if conv.in_group == group:
        saved += area * widths[conv.out_group]
    return saved


def out_side(side: int, stride: int) -> int:
    """Spatial side after a conv with `same` padding (kernel // 2) and this stride."""
    return (side + stride - 1) // stride
