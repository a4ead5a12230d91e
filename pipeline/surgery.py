"""Physical channel removal: one call removes any set of channels from any groups at once.

For a VGG, removing filter j of a conv layer removes output channel j of the conv, channel j of
its BatchNorm (weight, bias, running mean and variance), input channel j of the next conv, or the
matching input columns of the classifier (done here directly). For ResNet and MobileNetV2 the
channels of a coupled group (a residual stream, a block's expanded channels) are removed through
Torch-Pruning's dependency graph, which follows them through every conv, BatchNorm, depthwise
conv and residual add. Either way the new network is then rebuilt from the new widths and the
pruned tensors are loaded into it, so its spec always describes it.
"""

from __future__ import annotations

import copy

import torch

from pipeline.catalog import VGG_BLOCKS
from pipeline.models.registry import ArchSpec, build
from pipeline.models.staged import StagedNet
from pipeline.models.vgg import VGG


def _keep_indices(width: int, removed: list[int], layer: str) -> torch.Tensor:
    bad = [i for i in removed if not 0 <= i < width]
    if bad:
        raise ValueError(f"{layer} has {width} channels; cannot remove indices {bad}")
    keep = sorted(set(range(width)) - set(removed))
    if not keep:
        raise ValueError(f"removing every channel of {layer} would disconnect the network")
    return torch.tensor(keep, dtype=torch.long)


def remove_filters(
    model: StagedNet, spec: ArchSpec, removals: dict[str, list[int]]
) -> tuple[StagedNet, ArchSpec]:
    """A new model without the given channels; `model` itself is left untouched.

    Args:
        removals: channel group name (a VGG conv layer) -> indices of its channels to remove.
    """
    widths = spec.width_of()
    unknown = set(removals) - set(widths)
    if unknown:
        raise ValueError(f"unknown channel groups {sorted(unknown)}; groups are {list(widths)}")
    keep = {n: _keep_indices(w, removals.get(n, []), n) for n, w in widths.items()}
    new_spec = spec.with_widths({n: len(k) for n, k in keep.items()})
    if spec.arch not in VGG_BLOCKS:
        return _remove_coupled(model, spec, new_spec, removals), new_spec
    return _remove_vgg(model, spec, new_spec, keep), new_spec


def _remove_coupled(model: StagedNet, spec: ArchSpec, new_spec: ArchSpec,
                    removals: dict[str, list[int]]) -> StagedNet:
    import torch_pruning as tp  # only pruning needs it: serving and the device never load it

    device = next(model.parameters()).device
    work = copy.deepcopy(model).eval()  # eval: tracing must not move BatchNorm statistics
    example = torch.zeros(1, spec.in_channels, spec.input_size, spec.input_size, device=device)
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(work, example_inputs=example, verbose=False)
        for group, indices in removals.items():
            if indices:
                root = work.get_submodule(spec.layout.members(group)[0].path)
                graph.get_pruning_group(root, tp.prune_conv_out_channels, sorted(indices)).prune()
    new_model = build(new_spec).to(device)
    try:
        new_model.load_state_dict(work.state_dict())
    except RuntimeError as err:  # the graph coupled other channels than the layout says
        raise RuntimeError(f"{spec.arch}: the dependency graph's channel groups disagree with "
                           f"the layout: {err}") from err
    new_model.train(model.training)
    return new_model


def _remove_vgg(model: VGG, spec: ArchSpec, new_spec: ArchSpec, keep: dict[str, torch.Tensor]) -> VGG:
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
    return new_model
