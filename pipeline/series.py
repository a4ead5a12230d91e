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
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from pipeline.atomic import write_bytes_atomic, write_json_atomic
from pipeline.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pipeline.models.registry import ArchSpec

FORMAT = "twostep-series/1"
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20
ID_PATTERN = r"^[A-Za-z0-9_.-]{1,128}$"


class SeriesError(ValueError):
    """A series directory that is missing, malformed or tampered with."""


def _inside(folder: str, what: str):
    """A check that a path names a file in the series' `folder`, never outside the series."""
    def check(value: str) -> str:
        if not value.startswith(f"{folder}/") or ".." in value:
            raise ValueError(f"bad {what} path {value!r} (must be {folder}/<file> inside the series)")
        return value
    return check


class _Document(BaseModel):
    # Keys this model does not name (a newer twostep's, a tool's) are kept and written back.
    model_config = ConfigDict(extra="allow", validate_assignment=True)

    def to_json(self) -> dict:
        """The JSON document: what was read, with what was set since (keys never set stay absent)."""
        return self.model_dump(mode="json", exclude_unset=True)


class SplitStats(_Document):
    """What the series measured of one offered split: the coded frame's bytes, its element count,
    and the MACs on either side (absent in series made before they were recorded)."""

    bytes_mean: float = Field(ge=0)
    bytes_p95: float = Field(ge=0)
    elements: int | None = Field(None, ge=0)
    head_macs: int | None = Field(None, ge=0)
    tail_macs: int | None = Field(None, ge=0)


class GraphRecord(_Document):
    """An ONNX graph `twostep export` wrote: a file in the series' onnx/ folder and its sha256."""

    path: Annotated[str, AfterValidator(_inside("onnx", "graph"))]
    sha256: str


class SplitGraphs(_Document):
    """The head and tail graphs exported at one split (none at `input`, no tail at `output`)
    and, as extra keys, the export's check against torch."""

    head: GraphRecord | None = None
    tail: GraphRecord | None = None


class Measured(_Document):
    """What pruning measured of one model (`describe_variant`; a Tune trial's checkpoint): the
    base, a step-1 iteration or a step-2 iteration at a layer, before the store adds its weights."""

    id: str = Field(pattern=ID_PATTERN)
    step: int = Field(ge=0, le=2)
    iteration: int = Field(ge=0)
    split: str | None = None
    layer: str | None = None
    val_accuracy: float | None = Field(ge=0.0, le=1.0)
    test_accuracy: float | None = Field(ge=0.0, le=1.0)
    macs: int = Field(ge=0)
    splits: dict[str, SplitStats]

    @property
    def accuracy(self) -> float:
        """The accuracy a variant is judged by: on the test set, else on validation."""
        value = self.test_accuracy if self.test_accuracy is not None else self.val_accuracy
        if value is None:
            raise SeriesError(f"variant {self.id} has neither a test nor a validation accuracy")
        return value


class Variant(Measured):
    """One model of the series as the manifest records it: what was measured, its architecture
    and its weights file (and the ONNX graphs `twostep export` wrote of it)."""

    spec: dict[str, Any]
    weights: Annotated[str, AfterValidator(_inside("weights", "weights"))]
    sha256: str
    onnx: dict[str, SplitGraphs] = Field(default_factory=dict)

    @property
    def arch_spec(self) -> ArchSpec:
        return ArchSpec.from_dict(self.spec)

    def graph(self, split: str, part: str) -> GraphRecord | None:
        """The exported ONNX graph (`part` head or tail) at `split`, or None."""
        graphs = self.onnx.get(split)
        return getattr(graphs, part) if graphs is not None else None


class Manifest(_Document):
    """The series' `manifest.json`, parsed and validated once when the series is opened."""

    format: Literal["twostep-series/1"]
    base_spec: dict[str, Any]
    data: dict[str, Any]
    codec: dict[str, Any]
    config: dict[str, Any] = Field(default_factory=dict)
    base: str | None = None
    step1: str | None = None
    variants: list[Variant]
    step1_call_times: dict[str, Any] | None = None
    step1_layer_model: dict[str, Any] | None = None
    step1_continued_from: dict[str, Any] | None = None
    onnx_export: dict[str, Any] | None = None

    def variant(self, vid: str) -> Variant:
        for v in self.variants:
            if v.id == vid:
                return v
        raise SeriesError(f"unknown variant {vid!r}; the series has {len(self.variants)} variants")

    @property
    def base_variant(self) -> Variant | None:
        return self.variant(self.base) if self.base is not None else None

    @property
    def step1_variant(self) -> Variant | None:
        return self.variant(self.step1) if self.step1 is not None else None

    @property
    def step1_or_base(self) -> str | None:
        """The step-1 model's id, or the base's where step 1 has not finished."""
        return self.step1 or self.base

    @property
    def base_arch(self) -> ArchSpec:
        return ArchSpec.from_dict(self.base_spec)

    def by_id(self) -> dict[str, Variant]:
        return {v.id: v for v in self.variants}

    def step(self, step: int) -> list[Variant]:
        """The variants of one step (0 the base, 1, 2), in manifest order."""
        return [v for v in self.variants if v.step == step]

    @model_validator(mode="after")
    def _unique_ids(self) -> Manifest:
        seen = set()
        for v in self.variants:
            if v.id in seen:
                raise ValueError(f"variant id {v.id!r} appears twice")
            seen.add(v.id)
        for name in ("base", "step1"):
            vid = getattr(self, name)
            if vid is not None and vid not in seen:
                raise ValueError(f"{name!r} names {vid!r}, which is not a variant of the series")
        return self


def variant_id(arch: str, step: int, iteration: int, layer: str | None = None) -> str:
    """`vgg16-base`, `vgg16-s1-i3`, `vgg16-s2-conv3_1-i5`."""
    if step == 0:
        return f"{arch}-base"
    if step == 1:
        return f"{arch}-s1-i{iteration}"
    return f"{arch}-s2-{layer}-i{iteration}"


def graph_files(manifest: Manifest) -> set[str]:
    """Every exported ONNX graph file the manifest points at (`twostep export`)."""
    return {graph.path for v in manifest.variants for record in v.onnx.values()
            for graph in (record.head, record.tail) if graph is not None}


def _fault(err: ValidationError) -> str:
    """Pydantic's first error as one line naming where it is: `variants.3.weights: ...`."""
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "the document"
    return f"{where}: {first['msg']}"


def validate_manifest(document: object, where: str = "manifest") -> Manifest:
    """The typed manifest of a JSON document, or SeriesError naming the first fault."""
    if isinstance(document, Manifest):
        document = document.to_json()
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SeriesError(f"{where} is not a twostep series manifest (format {FORMAT!r} expected)")
    try:
        return Manifest.model_validate(document)
    except ValidationError as err:
        raise SeriesError(f"{where}: {_fault(err)}") from None


def parse_manifest(data: bytes | None, where: str) -> Manifest:
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


def measured(entry: Measured | dict, where: str = "entry") -> Measured:
    """`entry` as a checked `Measured` (a dict is validated; SeriesError naming the fault)."""
    if isinstance(entry, Measured):
        return entry
    try:
        return Measured.model_validate(entry)
    except ValidationError as err:
        raise SeriesError(f"{where}: {_fault(err)}") from None


def manifest_path(directory: str | os.PathLike) -> Path:
    """Where a series directory keeps its manifest."""
    return Path(directory) / MANIFEST


def is_series(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds a series (a manifest; not yet validated)."""
    return manifest_path(directory).is_file()


class SeriesStore:
    """Read and append to a model series directory (one writer at a time)."""

    def __init__(self, directory: str | os.PathLike, manifest: Manifest):
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
        if is_series(directory):
            raise SeriesError(f"{directory} already holds a series; open it or choose another")
        (directory / "weights").mkdir(parents=True, exist_ok=True)
        manifest = Manifest(format=FORMAT, base_spec=base_spec.to_dict(), data=data, codec=codec,
                            config=config or {}, base=None, step1=None, variants=[])
        store = cls(directory, manifest)
        store._save()
        return store

    @classmethod
    def open(cls, directory: str | os.PathLike) -> SeriesStore:
        path = manifest_path(directory)
        data = path.read_bytes() if path.is_file() else None
        return cls(directory, parse_manifest(data, str(directory)))

    # ---- reading ----
    @property
    def variants(self) -> list[Variant]:
        return self.manifest.variants

    def ids(self) -> list[str]:
        return [v.id for v in self.variants]

    def get(self, vid: str) -> Variant:
        return self.manifest.variant(vid)

    def has(self, vid: str) -> bool:
        return any(v.id == vid for v in self.variants)

    def weights_path(self, vid: str) -> Path:
        return self.directory / self.get(vid).weights

    def load_model(self, vid: str) -> tuple[nn.Module, ArchSpec, Variant]:
        """Rebuild variant `vid` and load its weights after checking their sha256."""
        entry = self.get(vid)
        try:
            model, spec, _ = load_checkpoint(self.directory / entry.weights, entry.sha256)
        except CheckpointError as err:
            raise SeriesError(f"variant {vid}: {err}") from err
        if spec.to_dict() != entry.spec:
            raise SeriesError(f"variant {vid}: weights file architecture differs from manifest")
        return model, spec, entry

    def graph_record(self, vid: str, split: str, part: str) -> GraphRecord | None:
        """The manifest's record of an exported ONNX graph (`part` head or tail), or None."""
        return self.get(vid).graph(split, part)

    def graph_bytes(self, vid: str, split: str, part: str) -> bytes | None:
        """The exported graph's bytes after checking their sha256, or None if not exported."""
        record = self.graph_record(vid, split, part)
        if record is None:
            return None
        path = self.directory / record.path
        data = path.read_bytes() if path.is_file() else None
        if data is None or hashlib.sha256(data).hexdigest() != record.sha256:
            raise SeriesError(f"variant {vid}: {record.path} is missing or does not match its "
                              "sha256; run `twostep export` again")
        return data

    # ---- writing ----
    def add_variant(self, model: nn.Module, spec: ArchSpec, entry: Measured | dict) -> Variant:
        """Write the weights, then record `entry` (id, step, split, iteration, accuracies,
        macs, splits, ...); the weights path, sha256 and spec are filled in here."""
        entry = measured(entry)
        relative = f"weights/{entry.id}.safetensors"
        sha = save_checkpoint(self.directory / relative, model, spec, {"variant": entry.id})
        full = Variant.model_validate({**entry.to_json(), "spec": spec.to_dict(), "weights": relative,
                                       "sha256": sha})
        self.manifest.variants = [v for v in self.variants if v.id != full.id] + [full]
        self._save()
        return full

    def copy_variant(self, source: SeriesStore, vid: str) -> Variant:
        """Add `source`'s variant `vid` as it is: its weights file byte for byte (its sha256
        checked first) and its entry, without the ONNX graphs exported of it."""
        entry = source.get(vid)
        data = source.weights_path(vid).read_bytes()
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise SeriesError(f"variant {vid} of {source.directory}: its weights do not match their sha256")
        write_bytes_atomic(self.directory / entry.weights, data)
        copied = Variant.model_validate({k: v for k, v in entry.to_json().items() if k != "onnx"})
        self.manifest.variants = [v for v in self.variants if v.id != vid] + [copied]
        self._save()
        return copied

    def set_field(self, key: str, value: object) -> None:
        """Set a top-level key (`base`, `step1`, a record such as `step1_call_times`) and save."""
        if key in ("format", "variants"):
            raise SeriesError(f"{key!r} cannot be set directly")
        # Checked on a copy first: a refused value leaves the manifest as it was.
        validate_manifest({**self.manifest.to_json(), key: value}, str(manifest_path(self.directory)))
        setattr(self.manifest, key, value)
        self._save()

    def reorder(self, ordered: list[Variant]) -> None:
        """Rewrite the manifest with the same variants in another order."""
        if sorted(v.id for v in ordered) != sorted(self.ids()):
            raise SeriesError("a reordering must keep exactly the series' variants")
        self.manifest.variants = list(ordered)
        self._save()

    def _save(self) -> None:
        document = self.manifest.to_json()
        validate_manifest(document, str(manifest_path(self.directory)))
        write_json_atomic(manifest_path(self.directory), document)
