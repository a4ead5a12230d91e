"""Head weights for devices: the tensors of the stages up to a split, as safetensors bytes.

A device needs only its half of a variant. `pack_head` writes those tensors (safetensors, no
pickle, with the format, variant, split and spec as metadata); the edge serves them with their
sha256. `load_head` rebuilds the variant's architecture from its spec, checks that the tensors are
exactly the head's (names and shapes) and loads them; the tail's parameters stay untrained and
unused. Split `output` is the whole network; split `input` has no tensors at all.
"""

from __future__ import annotations

import hashlib
import json

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from pipeline.models.registry import ArchSpec, build
from pipeline.split import check_split, split_points

HEAD_FORMAT = "twostep-head/1"


def head_prefixes(spec: ArchSpec, split: str) -> tuple[str, ...]:
    """State-dict key prefixes of the stages a device runs for `split`."""
    check_split(spec, split)
    points = split_points(spec)
    stages = points[1: points.index(split) + 1]
    return tuple("classifier." if s == "output" else f"stages.{s}." for s in stages)


def head_state(model: nn.Module, spec: ArchSpec, split: str) -> dict[str, torch.Tensor]:
    prefixes = head_prefixes(spec, split)
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
            if k.startswith(prefixes)}


def pack_head(model: nn.Module, spec: ArchSpec, variant_id: str, split: str) -> tuple[bytes, str]:
    """(safetensors bytes of the head of `model` at `split`, their sha256 hex digest)."""
    metadata = {"format": HEAD_FORMAT, "variant": variant_id, "split": split, "spec": spec.to_json()}
    data = save_safetensors(head_state(model, spec, split), metadata=metadata)
    return data, hashlib.sha256(data).hexdigest()


def load_head(data: bytes, spec: ArchSpec, split: str, expected_sha256: str | None = None) -> nn.Module:
    """The variant `spec` with the head tensors in `data` loaded (eval mode).

    Raises:
        ValueError: the sha256 differs, the bytes are not safetensors, or the tensors are not
            exactly the head's at `split` (missing, extra or misshapen).
    """
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256.lower():
            raise ValueError(f"head weights sha256 is {actual}, expected {expected_sha256}")
    try:
        tensors = load_safetensors(bytes(data))
    except (SafetensorError, ValueError, json.JSONDecodeError) as err:
        raise ValueError(f"head weights are not a readable safetensors file: {err}") from err
    model = build(spec)
    expected = head_state(model, spec, split)
    if set(tensors) != set(expected):
        missing = sorted(set(expected) - set(tensors))[:5]
        extra = sorted(set(tensors) - set(expected))[:5]
        raise ValueError(f"head weights for split {split!r} do not match the architecture: "
                         f"missing {missing}, unexpected {extra}")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape or tensor.dtype != expected[name].dtype:
            raise ValueError(f"head tensor {name} is {tuple(tensor.shape)} {tensor.dtype}, "
                             f"expected {tuple(expected[name].shape)} {expected[name].dtype}")
    model.load_state_dict(tensors, strict=False)
    return model.eval()
