"""ResNet-18 from torchvision's definition, in the CIFAR layout: a 3x3 stride-1 stem without the
max-pool, so a 32x32 input reaches the last stage at 4x4.

Split points: `stem`, then every residual block (`layer1_0`, `layer1_1`, ..., `layer4_1`), `pool`
(global average pooling) and `output`. Channel groups: the residual stream of each stage
(`layer1` ... `layer4`: the stem or the stage's shortcut conv and the last conv of every block
add into it, so their channels go together) and the inner channels of each block
(`layer2_0_conv1`, ...).
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.layout import Conv, Layout, Linear, Stage, out_side
from pipeline.models.staged import StagedNet, resize

STAGE_WIDTHS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = 2


def layout(input_size: int) -> Layout:
    side = input_size
    stem = Conv("stages.stem.0", "stages.stem.1", None, "layer1", 3, 1, side)
    stages, groups, stream = [Stage("stem", "layer1", side, (stem,))], ["layer1"], "layer1"
    for index in range(1, len(STAGE_WIDTHS) + 1):
        group = f"layer{index}"
        for block in range(BLOCKS_PER_STAGE):
            name, stride = f"layer{index}_{block}", 2 if index > 1 and block == 0 else 1
            side = out_side(side, stride)
            inner = f"{name}_conv1"
            convs = [Conv(f"stages.{name}.conv1", f"stages.{name}.bn1", stream, inner, 3, stride, side),
                     Conv(f"stages.{name}.conv2", f"stages.{name}.bn2", inner, group, 3, 1, side)]
            if stream != group:
                convs.append(Conv(f"stages.{name}.downsample.0", f"stages.{name}.downsample.1",
                                  stream, group, 1, stride, side))
            groups += [inner] + ([group] if group not in groups else [])
            stages.append(Stage(name, group, side, tuple(convs)))
            stream = group
    stages.append(Stage("pool", stream, 1))
    stages.append(Stage("output", None, 0, linear=Linear("classifier.1", stream, 1)))
    return Layout(tuple(stages), tuple(groups))


def full_widths(width_mult: float) -> dict[str, int]:
    """Every group's width in the standard network scaled by `width_mult` (at least 1)."""
    widths = {}
    for index, base in enumerate(STAGE_WIDTHS, start=1):
        width = max(1, round(base * width_mult))
        widths[f"layer{index}"] = width
        for block in range(BLOCKS_PER_STAGE):
            widths[f"layer{index}_{block}_conv1"] = width
    return widths


def build(widths: dict[str, int], in_channels: int, num_classes: int, input_size: int) -> StagedNet:
    from torchvision.models import resnet18  # here: importing torchvision costs every CLI verb ~1 s

    with torch.device("meta"):  # a skeleton without storage: `resize` gives every layer its tensors
        net = resnet18(num_classes=num_classes)
        stem = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    stages: dict[str, nn.Module] = {"stem": nn.Sequential(stem, net.bn1, net.relu)}
    for index in range(1, len(STAGE_WIDTHS) + 1):
        for block, module in enumerate(getattr(net, f"layer{index}")):
            stages[f"layer{index}_{block}"] = module
    stages["pool"] = net.avgpool
    model = StagedNet("resnet18", stages, nn.Sequential(nn.Flatten(1), net.fc), in_channels, input_size)
    return resize(model, layout(input_size), widths, in_channels, num_classes)
