"""The model series store: a directory with a JSON manifest and one safetensors file per variant.

Layout:
    DIR/manifest.json            format, base spec, data info, codec, config, variants
    DIR/weights/<id>.safetensors one per variant (base, step-1 iterations, step-2 iterations)

Weights are written first (atomically), the manifest last (atomically, temp file + rename), so
a crash at any moment leaves a manifest whose every entry points at a complete file. Loading
checks each file's sha256 before rebuilding the architecture from the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from torch import nn

from pipeline.atomic import write_json_atomic
from pipeline.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pipeline.models.registry import ArchSpec

FORMAT = "twostep-series/1"
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
REQUIRED_VARIANT_KEYS = (
    "id", "step", "split", "iteration", "spec", "val_accuracy", "test_accuracy", "macs",
    "splits", "weights", "sha256",
)


class SeriesError(ValueError):
    """A series directory that is missing, malformed or tampered with."""


def variant_id(arch: str, step: int, iteration: int, layer: str | None = None) -> str:
    """`vgg16-base`, `vgg16-s1-i3`, `vgg16-s2-conv3_1-i5`."""
    if step == 0:
        return f"{arch}-base"
    if step == 1:
        return f"{arch}-s1-i{iteration}"
    return f"{arch}-s2-{layer}-i{iteration}"


def validate_manifest(document: object, where: str = "manifest") -> dict:
    """Check the structure of a manifest; returns it or raises SeriesError naming the fault."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SeriesError(f"{where} is not a twostep series manifest (format {FORMAT!r} expected)")
    for key in ("base_spec", "data", "codec", "variants"):
        if key not in document:
            raise SeriesError(f"{where} lacks {key!r}")
    if not isinstance(document["variants"], list):
        raise SeriesError(f"{where}: 'variants' must be a list")
    seen = set()
    for i, v in enumerate(document["variants"]):
        if not isinstance(v, dict):
            raise SeriesError(f"{where}: variant #{i} is not an object")
        missing = [k for k in REQUIRED_VARIANT_KEYS if k not in v]
        if missing:
            raise SeriesError(f"{where}: variant #{i} lacks {missing}")
        if not isinstance(v["id"], str) or not ID_PATTERN.match(v["id"]) or v["id"] in seen:
            raise SeriesError(f"{where}: variant #{i} has a bad or duplicate id {v['id']!r}")
        if not isinstance(v["weights"], str) or not v["weights"].startswith("weights/") or \
                ".." in v["weights"]:
            raise SeriesError(f"{where}: variant {v['id']} has a bad weights path {v['weights']!r} "
                              "(must be weights/<file> inside the series)")
        _check_graph_records(v, where)
        seen.add(v["id"])
    return document


def graph_files(manifest: dict) -> set[str]:
    """Every exported ONNX graph file the manifest points at (`twostep export`)."""
    return {record[part]["path"] for v in manifest["variants"] for record in v.get("onnx", {}).values()
            for part in ("head", "tail") if record.get(part)}


def _check_graph_records(variant: dict, where: str) -> None:
    """The ONNX graphs of `twostep export`, if any: files inside the series' onnx/ folder."""
    records = variant.get("onnx", {})
    if not isinstance(records, dict):
        raise SeriesError(f"{where}: variant {variant['id']} has a bad 'onnx' entry")
    for split, record in records.items():
        for part in ("head", "tail"):
            graph = record.get(part) if isinstance(record, dict) else "?"
            if graph is None:
                continue
            path = graph.get("path") if isinstance(graph, dict) else None
            if not isinstance(path, str) or not path.startswith("onnx/") or ".." in path or \
                    not isinstance(graph.get("sha256"), str):
                raise SeriesError(f"{where}: variant {variant['id']} has a bad onnx {part} record "
                                  f"at split {split!r} (a path onnx/<file> and a sha256 expected)")


def parse_manifest(data: bytes | None, where: str) -> dict:
    """The validated manifest in `data` (the bytes of `<where>/manifest.json`; None if missing)."""
    if data is None:
        raise SeriesError(f"no model series at {where!r} (missing {MANIFEST})")
    if len(data) > MAX_MANIFEST_BYTES:
        raise SeriesError(f"{where}/{MANIFEST} is larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        document = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SeriesError(f"{where}/{MANIFEST} is not valid JSON: {err}") from err
    return validate_manifest(document, f"{where}/{MANIFEST}")


class SeriesStore:
    """Read and append to a model series directory (one writer at a time)."""

    def __init__(self, directory: str | os.PathLike, manifest: dict):
        self.directory = Path(directory)
        self.manifest = manifest

    # ---- opening ----
    @classmethod
    def create(
        cls, directory: str | os.PathLike, base_spec: ArchSpec, data: dict, codec: dict,
        config: dict | None = None,
    ) -> SeriesStore:
        """A new, empty series; refuses to overwrite an existing one."""
        directory = Path(directory)
        if (directory / MANIFEST).exists():
            raise SeriesError(f"{directory} already holds a series; open it or choose another")
        (directory / "weights").mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": FORMAT, "base_spec": base_spec.to_dict(), "data": data, "codec": codec,
            "config": config or {}, "base": None, "step1": None, "variants": [],
        }
        store = cls(directory, manifest)
        store._save()
        return store

    @classmethod
    def open(cls, directory: str | os.PathLike) -> SeriesStore:
        directory = Path(directory)
        path = directory / MANIFEST
        data = path.read_bytes() if path.is_file() else None
        return cls(directory, parse_manifest(data, str(directory)))

    # ---- reading ----
    @property
    def variants(self) -> list[dict]:
        return self.manifest["variants"]

    def ids(self) -> list[str]:
        return [v["id"] for v in self.variants]

    def get(self, vid: str) -> dict:
        for v in self.variants:
            if v["id"] == vid:
                return v
        raise SeriesError(f"unknown variant {vid!r}; the series has {len(self.variants)} variants")

    def has(self, vid: str) -> bool:
        return any(v["id"] == vid for v in self.variants)

    def weights_path(self, vid: str) -> Path:
        return self.directory / self.get(vid)["weights"]

    def load_model(self, vid: str) -> tuple[nn.Module, ArchSpec, dict]:
        """Rebuild variant `vid` and load its weights after checking their sha256."""
        entry = self.get(vid)
        try:
            model, spec, _ = load_checkpoint(self.directory / entry["weights"], entry["sha256"])
        except CheckpointError as err:
            raise SeriesError(f"variant {vid}: {err}") from err
        if spec.to_dict() != entry["spec"]:
            raise SeriesError(f"variant {vid}: weights file architecture differs from manifest")
        return model, spec, entry

    def graph_record(self, vid: str, split: str, part: str) -> dict | None:
        """The manifest's record of an exported ONNX graph (`part` head or tail), or None."""
        record = self.get(vid).get("onnx", {}).get(split)
        return record.get(part) if record else None

    def graph_bytes(self, vid: str, split: str, part: str) -> bytes | None:
        """The exported graph's bytes after checking their sha256, or None if not exported."""
        record = self.graph_record(vid, split, part)
        if record is None:
            return None
        path = self.directory / record["path"]
        data = path.read_bytes() if path.is_file() else None
        if data is None or hashlib.sha256(data).hexdigest() != record["sha256"]:
            raise SeriesError(f"variant {vid}: {record['path']} is missing or does not match its "
                              "sha256; run `twostep export` again")
        return data

    # ---- writing ----
    def add_variant(self, model: nn.Module, spec: ArchSpec, entry: dict) -> dict:
        """Write the weights, then record `entry` (id, step, split, iteration, accuracies,
        macs, splits, ...); the weights path, sha256 and spec are filled in here."""
        vid = entry["id"]
        if not ID_PATTERN.match(vid):
            raise SeriesError(f"bad variant id {vid!r}")
        relative = f"weights/{vid}.safetensors"
        sha = save_checkpoint(self.directory / relative, model, spec, {"variant": vid})
        full = {**entry, "spec": spec.to_dict(), "weights": relative, "sha256": sha}
        self.manifest["variants"] = [v for v in self.variants if v["id"] != vid] + [full]
        self._save()
        return full

    def set_field(self, key: str, value: object) -> None:
        if key in ("format", "variants"):
            raise SeriesError(f"{key!r} cannot be set directly")
        self.manifest[key] = value
        self._save()

    def _save(self) -> None:
        validate_manifest(self.manifest)
        write_json_atomic(self.directory / MANIFEST, self.manifest)
