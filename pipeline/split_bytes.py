"""Measure what each split point costs on the wire: encoded frame bytes over real images."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.codec import CodecConfig, encode_frame, variant_tag
from pipeline.models.registry import ArchSpec
from pipeline.models.staged import StagedNet
from pipeline.split import head_tail_macs, split_elements


@torch.no_grad()
def stage_outputs(model: StagedNet, x: torch.Tensor, splits: list[str]) -> dict[str, torch.Tensor]:
    """The tensors at the given split points for input batch `x` (one forward pass)."""
    model.eval()
    wanted = set(splits)
    out = {"input": x} if "input" in wanted else {}
    x = x.to(next(model.parameters()).device)
    for name, stage in model.ordered_stages():
        x = stage(x)
        if name in wanted:
            out[name] = x.cpu()
    return out


def measure_split_bytes(
    model: StagedNet, spec: ArchSpec, images: torch.Tensor, splits: list[str], codec: CodecConfig,
    vid: str = "",
) -> dict[str, dict]:
    """Per split: head/tail MACs, elements, and the mean and p95 of whole-frame bytes (header
    included) when each image is sent alone, as a request at batch size 1 would be.

    Args:
        images: normalised input batch (N, C, H, W).
    """
    tag = variant_tag(vid) if vid else 0
    result = {}
    for split, tensor in stage_outputs(model, images, splits).items():
        sizes = np.array([len(encode_frame(t[None].numpy(), codec, tag)) for t in tensor])
        head, tail = head_tail_macs(spec, split)
        result[split] = {
            "head_macs": head, "tail_macs": tail, "elements": split_elements(spec, split),
            "bytes_mean": float(sizes.mean()), "bytes_p95": float(np.percentile(sizes, 95)),
        }
    return {s: result[s] for s in splits}
