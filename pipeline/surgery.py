"""Physical filter removal: one call removes any set of filters from any conv layers at once.

Removing filter j of a conv layer removes output channel j of the conv, channel j of its
BatchNorm (weight, bias, running mean and variance), input channel j of the next conv, or the
matching input columns of the classifier. The new network is rebuilt from the new widths, so its
spec always describes it. (Residual networks will need coupled channel groups; this module's
interface - layer name to filter indices - stays the same.)
"""

from __future__ import annotations

import torch

from pipeline.models.registry import ArchSpec, build
from pipeline.models.vgg import VGG


def _keep_indices(width: int, removed: list[int], layer: str) -> torch.Tensor:
    bad = [i for i in removed if not 0 <= i < width]
    if bad:
        raise ValueError(f"{layer} has {width} filters; cannot remove indices {bad}")
    keep = sorted(set(range(width)) - set(removed))
    if not keep:
        raise ValueError(f"removing every filter of {layer} would disconnect the network")
    return torch.tensor(keep, dtype=torch.long)


def remove_filters(
    model: VGG, spec: ArchSpec, removals: dict[str, list[int]]
) -> tuple[VGG, ArchSpec]:
    """A new model without the given filters; `model` itself is left untouched.

    Args:
        removals: conv layer name -> indices of its filters to remove.
    """
    widths = spec.width_of()
    unknown = set(removals) - set(widths)
    if unknown:
        raise ValueError(f"unknown layers {sorted(unknown)}; conv layers are {list(widths)}")
    keep = {n: _keep_indices(w, removals.get(n, []), n) for n, w in widths.items()}
    new_spec = spec.with_widths({n: len(k) for n, k in keep.items()})
    device = next(model.parameters()).device
    new_model = build(new_spec).to(device)
    old_blocks, new_blocks = model.conv_blocks(), new_model.conv_blocks()
    keep = {n: k.to(device) for n, k in keep.items()}
    in_keep = torch.arange(spec.in_channels, device=device)
    with torch.no_grad():
        for name, out_keep in keep.items():
            old, new = old_blocks[name], new_blocks[name]
            new.conv.weight.copy_(old.conv.weight[out_keep][:, in_keep])
            for attr in ("weight", "bias", "running_mean", "running_var"):
                getattr(new.bn, attr).copy_(getattr(old.bn, attr)[out_keep])
            new.bn.num_batches_tracked.copy_(old.bn.num_batches_tracked)
            in_keep = out_keep
        # classifier inputs are channel-major: channel c owns columns c*side^2 .. (c+1)*side^2-1
        side2 = (spec.input_size // 32) ** 2
        columns = (in_keep[:, None] * side2 + torch.arange(side2, device=device)[None, :]).reshape(-1)
        new_model.classifier.linear.weight.copy_(model.classifier.linear.weight[:, columns])
        new_model.classifier.linear.bias.copy_(model.classifier.linear.bias)
    new_model.train(model.training)
    return new_model, new_spec
