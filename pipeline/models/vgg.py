"""VGG in the CIFAR layout (conv+BN+ReLU blocks, max-pools, one linear classifier).

The network is an ordered list of named stages; every stage boundary is a split point:
`input`, then `conv1_1`, `conv1_2`, `pool1`, ..., `pool5`, then `output` (all on the device).
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.catalog import VGG_BLOCKS

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


class VGG(nn.Module):
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
        super().__init__()
        self.arch = arch
        self.in_channels = in_channels
        self.input_size = input_size
        self.stages = nn.ModuleDict()
        channels = in_channels
        it = iter(widths)
        for name in stage_names(arch):
            if name.startswith("conv"):
                width = next(it)
                self.stages[name] = ConvBlock(channels, width)
                channels = width
            else:
                self.stages[name] = nn.MaxPool2d(2, 2)
        final_side = input_size // 32
        self.classifier = Classifier(channels * final_side * final_side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages.values():
            x = stage(x)
        return self.classifier(x)

    def ordered_stages(self) -> list[tuple[str, nn.Module]]:
        """(split point name, module producing it) for every stage after `input`."""
        return [*self.stages.items(), ("output", self.classifier)]

    def conv_blocks(self) -> dict[str, ConvBlock]:
        return {n: m for n, m in self.stages.items() if isinstance(m, ConvBlock)}
