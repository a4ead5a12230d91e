"""A network as named stages run in order, then a classifier; every stage boundary is a split
point. Also the one resize rule that gives a torchvision skeleton the widths of a spec."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.layout import Layout


class StagedNet(nn.Module):
    """`stages` in forward order, then `classifier` (the `output` split point)."""

    def __init__(self, arch: str, stages: dict[str, nn.Module], classifier: nn.Module,
                 in_channels: int, input_size: int):
        super().__init__()
        self.arch = arch
        self.in_channels = in_channels
        self.input_size = input_size
        self.stages = nn.ModuleDict(stages)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages.values():
            x = stage(x)
        return self.classifier(x)

    def ordered_stages(self) -> list[tuple[str, nn.Module]]:
        """(split point name, module producing it) for every stage after `input`."""
        return [*self.stages.items(), ("output", self.classifier)]


def replace_module(model: nn.Module, path: str, module: nn.Module) -> None:
    """Put `module` at the dotted `path` of `model` (`stages.block3.conv.1.0`)."""
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def resize(model: nn.Module, layout: Layout, widths: dict[str, int], in_channels: int,
           num_classes: int) -> nn.Module:
    """Replace every conv, BatchNorm and the classifier's linear layer of `model` (in place) by
    freshly initialised ones with the channels `widths` gives each group.

    Initialisation follows torchvision's ResNet and MobileNetV2 (Kaiming normal, fan-out, for
    convs; BatchNorm weight 1, bias 0); the forward code of the blocks is left as it is.
    """
    for conv in layout.convs():
        old = model.get_submodule(conv.path)
        cout = widths[conv.out_group]
        cin = widths[conv.in_group] if conv.in_group else in_channels
        new = nn.Conv2d(cin, cout, conv.kernel, conv.stride, old.padding,
                        groups=cout if conv.depthwise else 1, bias=old.bias is not None)
        nn.init.kaiming_normal_(new.weight, mode="fan_out")
        if new.bias is not None:
            nn.init.zeros_(new.bias)
        replace_module(model, conv.path, new)
        old_bn = model.get_submodule(conv.bn)
        replace_module(model, conv.bn, nn.BatchNorm2d(cout, old_bn.eps, old_bn.momentum))
    linear = layout.linear
    replace_module(model, linear.path, nn.Linear(widths[linear.in_group] * linear.side ** 2, num_classes))
    left = [name for name, t in model.state_dict().items() if t.is_meta]
    if left:
        raise RuntimeError(f"{model.arch}: the layout does not cover {left[:3]}")
    return model
