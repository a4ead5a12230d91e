"""VGG in the CIFAR layout (conv+BN+ReLU blocks, max-pools, one linear classifier).

The network is an ordered list of named stages; every stage boundary is a split point:
`input`, then `conv1_1`, `conv1_2`, `pool1`, ..., `pool5`, then `output` (all on the device).
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.catalog import VGG_BLOCKS
from pipeline.models.layout import Conv, Layout, Linear, Stage
from pipeline.models.staged import StagedNet

BLOCK_WIDTHS = (64, 128, 256, 512, 512)


def conv_names(arch: str) -> list[str]:
    """Names of the conv layers of `arch` in order (`conv1_1`, ...)."""
    return [f"conv{b + 1}_{i + 1}" for b, n in enumerate(VGG_BLOCKS[arch]) for i in range(n)]


def stage_names(arch: str) -> list[str]:
    """Names of all stages (convs and pools) in forward order."""
    names = []
    for b, n in enumerate(VGG_BLOCKS[arch]):
        names += [f"conv{b + 1}_{i + 1}" for i in range(n)]
        names.append(f"pool{b + 1}")
    return names


def full_widths(arch: str, width_mult: float = 1.0) -> list[int]:
    """Per-conv widths of the standard network scaled by `width_mult` (at least 1 each)."""
    return [
        max(1, round(BLOCK_WIDTHS[b] * width_mult))
        for b, n in enumerate(VGG_BLOCKS[arch])
        for _ in range(n)
    ]


class ConvBlock(nn.Sequential):
    """conv3x3 -> BatchNorm -> ReLU, the unit that pruning removes filters from."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=False),
        )

    @property
    def conv(self) -> nn.Conv2d:
        return self[0]

    @property
    def bn(self) -> nn.BatchNorm2d:
        return self[1]


class Classifier(nn.Module):
    """Flatten then one linear layer (the CIFAR-layout VGG head of the paper)."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(x, 1))


class VGG(StagedNet):
    """A VGG whose conv widths are given one per layer, so pruned variants rebuild exactly.

    Args:
        arch: one of `VGG_BLOCKS`.
        widths: output channels of each conv layer, in order.
        in_channels: channels of the input image.
        num_classes: outputs of the classifier.
        input_size: side of the square input; must be a multiple of 32.
    """

    def __init__(
        self,
        arch: str,
        widths: list[int],
        in_channels: int = 3,
        num_classes: int = 10,
        input_size: int = 32,
    ):
        stages: dict[str, nn.Module] = {}
        channels = in_channels
        it = iter(widths)
        for name in stage_names(arch):
            if name.startswith("conv"):
                width = next(it)
                stages[name] = ConvBlock(channels, width)
                channels = width
            else:
                stages[name] = nn.MaxPool2d(2, 2)
        final_side = input_size // 32
        classifier = Classifier(channels * final_side * final_side, num_classes)
        super().__init__(arch, stages, classifier, in_channels, input_size)

    def conv_blocks(self) -> dict[str, ConvBlock]:
        return {n: m for n, m in self.stages.items() if isinstance(m, ConvBlock)}


def layout(arch: str, input_size: int) -> Layout:
    """Stages and channel groups: one group per conv (its filters), pools pass the last on."""
    stages, side, previous = [], input_size, None
    for name in stage_names(arch):
        if name.startswith("conv"):
            conv = Conv(f"stages.{name}.0", f"stages.{name}.1", previous, name, 3, 1, side)
            stages.append(Stage(name, name, side, (conv,)))
            previous = name
        else:
            side //= 2
            stages.append(Stage(name, previous, side))
    stages.append(Stage("output", None, 0, linear=Linear("classifier.linear", previous, side)))
    return Layout(tuple(stages), tuple(conv_names(arch)))
