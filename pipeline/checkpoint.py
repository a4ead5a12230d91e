"""Checkpoints as single safetensors files: weights plus a JSON architecture in the metadata.

Loading never unpickles: the architecture is rebuilt from the JSON spec, then the tensors are
copied in. A tampered, truncated or foreign file is refused with `CheckpointError`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from pipeline.atomic import write_bytes_atomic
from pipeline.models.registry import ArchSpec, build

FORMAT = "twostep-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted or read."""


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(
    path: str | os.PathLike, model: nn.Module, spec: ArchSpec, meta: dict | None = None
) -> str:
    """Write `model` atomically (temp file + rename); returns the file's sha256."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "spec": spec.to_json(), "meta": json.dumps(meta or {})}
    data = save(tensors, metadata=metadata)
    write_bytes_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def read_metadata(path: str | os.PathLike) -> tuple[ArchSpec, dict]:
    """The architecture and user metadata of a checkpoint, without loading the weights."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint: {err}") from err
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a twostep checkpoint (format {metadata.get('format')!r})")
    try:
        spec = ArchSpec.from_dict(json.loads(metadata["spec"]))
        meta = json.loads(metadata.get("meta", "{}"))
    except (KeyError, json.JSONDecodeError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path} has a bad architecture description: {err}") from err
    return spec, meta


def load_checkpoint(
    path: str | os.PathLike, expected_sha256: str | None = None
) -> tuple[nn.Module, ArchSpec, dict]:
    """Rebuild the architecture from the file's spec and load its weights (no pickle).

    Args:
        path: a file written by `save_checkpoint`.
        expected_sha256: if given, the file must hash to it (refuses tampered files).

    Returns:
        (model in eval mode, spec, metadata dict).
    """
    path = Path(path)
    if expected_sha256 is not None:
        if not path.is_file():
            raise CheckpointError(f"weights file {str(path)!r} is missing")
        actual = file_sha256(path)
        if actual != expected_sha256:
            raise CheckpointError(
                f"weights file {path} has sha256 {actual[:12]}..., expected "
                f"{expected_sha256[:12]}...: refusing a modified file"
            )
    spec, meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is corrupt: {err}") from err
    model = build(spec)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit architecture {spec.arch}: {err}") from err
    model.eval()
    return model, spec, meta

