"""MobileNetV2 from torchvision's definition with a stride-1 stem for 32x32 inputs (the last
stage then runs at 2x2; making the second stage stride 1 too, as some CIFAR versions do, costs
3.7x the MACs and trains 5.5x slower on a 2-core CPU at width 0.5).

Split points: `stem`, every inverted-residual block (`block1` ... `block17`), the last 1x1 conv
(`last`), `pool` and `output`. Channel groups: `stem`; each block's expanded channels
(`block2_hidden`, ...: expansion conv and depthwise conv); the projected channels of each of the
seven stages (`stage1` ... `stage7`: a stage's residual adds couple its blocks' projections);
`last`. The first block has no expansion: its depthwise conv runs on the stem's channels.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.layout import Conv, Layout, Linear, Stage, out_side
from pipeline.models.staged import StagedNet, resize

# torchvision's (expansion t, channels c, blocks n, stride s) of the seven stages
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1))


def _blocks() -> list[tuple[int, int, int]]:
    """(stage number, expansion, stride) of every block in order (block i is features[i])."""
    return [(k, t, s if i == 0 else 1)
            for k, (t, _, n, s) in enumerate(SETTINGS, start=1) for i in range(n)]


def layout(input_size: int) -> Layout:
    side = input_size
    stem = Conv("stages.stem.0", "stages.stem.1", None, "stem", 3, 1, side)
    stages = [Stage("stem", "stem", side, (stem,))]
    groups, stream = ["stem"], "stem"
    for number, (stage, expansion, stride) in enumerate(_blocks(), start=1):
        name, group = f"block{number}", f"stage{stage}"
        prefix = f"stages.{name}.conv"
        convs, index = [], 0
        hidden = stream
        if expansion != 1:
            hidden = f"{name}_hidden"
            convs.append(Conv(f"{prefix}.0.0", f"{prefix}.0.1", stream, hidden, 1, 1, side))
            groups.append(hidden)
            index = 1
        side = out_side(side, stride)
        convs.append(Conv(f"{prefix}.{index}.0", f"{prefix}.{index}.1", hidden, hidden, 3, stride, side,
                          depthwise=True))
        convs.append(Conv(f"{prefix}.{index + 1}", f"{prefix}.{index + 2}", hidden, group, 1, 1, side))
        if group not in groups:
            groups.append(group)
        stages.append(Stage(name, group, side, tuple(convs)))
        stream = group
    last = Conv("stages.last.0", "stages.last.1", stream, "last", 1, 1, side)
    stages.append(Stage("last", "last", side, (last,)))
    groups.append("last")
    stages.append(Stage("pool", "last", 1))
    stages.append(Stage("output", None, 0, linear=Linear("classifier.2", "last", 1)))
    return Layout(tuple(stages), tuple(groups))


def _staged(width_mult: float, num_classes: int, in_channels: int, input_size: int) -> StagedNet:
    """torchvision's MobileNetV2 at `width_mult`, its features cut into named stages, as a
    skeleton without storage (`resize` gives every layer its tensors)."""
    from torchvision.models import mobilenet_v2  # here: importing torchvision costs every CLI verb ~1 s

    with torch.device("meta"):
        net = mobilenet_v2(num_classes=num_classes, width_mult=width_mult,
                           inverted_residual_setting=[list(s) for s in SETTINGS])
    features = list(net.features)
    stages: dict[str, nn.Module] = {"stem": features[0]}
    for number, block in enumerate(features[1:-1], start=1):
        stages[f"block{number}"] = block
    stages["last"] = features[-1]
    stages["pool"] = nn.AdaptiveAvgPool2d(1)
    classifier = nn.Sequential(nn.Flatten(1), *net.classifier)
    return StagedNet("mobilenetv2", stages, classifier, in_channels, input_size)


def full_widths(width_mult: float) -> dict[str, int]:
    """Every group's width in torchvision's network at `width_mult` (its rounding to multiples
    of 8, and its last conv of at least 1280 channels)."""
    net = _staged(width_mult, 10, 3, 32)
    return {conv.out_group: net.get_submodule(conv.path).out_channels for conv in layout(32).convs()}


def build(widths: dict[str, int], in_channels: int, num_classes: int, input_size: int) -> StagedNet:
    # the block structure (which blocks have a residual add) is width 1.0's at every width: at
    # 0.25, torchvision's own network would add one to block1, whose stem and output both round to 8
    model = _staged(1.0, num_classes, in_channels, input_size)
    return resize(model, layout(input_size), widths, in_channels, num_classes)
