"""Per-stage latency profiles of a model, and the versioned JSON document that stores them.

Each stage of `model.ordered_stages()` is timed alone on its real input (the previous stage's
output), with warm-up and the median of several repetitions taken round-robin over the stages.
Cumulative sums give, for every split point, the head time (stages up to the split) and the tail
time (stages after it). The whole forward is timed too, so the gap between the sum of stages and
one forward pass is visible.

Profile document (`twostep-profile/1`)::

    {"format": "twostep-profile/1", "created": ISO-8601 UTC,
     "machine": {"hostname", "platform", "cpu_count", "torch", "threads", "device"},
     "batch_size": 1, "warmup": 5, "repeats": 20,
     "slowdown": 1.0, "derived_from": null | {"hostname", "created", "slowdown"},
     "model_form": "inference (BatchNorm folded)" (absent in profiles made before it was),
     "runtime": "torch" | "onnxruntime" (absent: torch), "idle_ms": idle time before each call,
     "variants": {id: {"spec": ArchSpec dict (optional),
                       "layers": [{"name": "conv1_1", "ms": 0.12}, ...],
                       "head_ms": {split: ms}, "tail_ms": {split: ms},
                       "total_ms": sum of layers, "whole_ms": one forward pass}}}

Optionally `"codec": {"encode_ms": [fixed, per_element], "decode_ms": [fixed, per_element],
"settings": {...}}`: the time to encode / decode a feature map of n elements is `fixed +
per_element x n` (`codec_timing`); selection adds it to the head (device) and tail (edge) of every
split that sends a frame.

A layer is named by the split point it produces (`conv1_1`, ..., `pool5`, `output` for the
classifier). `head_ms["input"] == 0`, `tail_ms["output"] == 0` and `head + tail == total` at every
split. A derived profile (a device modelled as `slowdown` times slower than the machine measured)
has every time scaled and `derived_from` set.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import platform
import socket
import statistics
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

from pipeline.atomic import write_json_atomic
from pipeline.models.inference import inference_form
from pipeline.models.registry import ArchSpec
from pipeline.runtime import DEFAULT_RUNTIME, RUNTIMES, profile_runtime
from pipeline.split import split_points

FORMAT = "twostep-profile/1"
MAX_PROFILE_BYTES = 64 << 20
# What `profile_model` times; profiles without this key timed the unfolded models (slower).
MODEL_FORM = "inference (BatchNorm folded)"
# Relative tolerance of the head + tail == total check when loading a file.
_SUM_RTOL = 1e-6


def machine_info(device: str | torch.device = "cpu") -> dict:
    """Description of the machine a profile is measured on."""
    device = torch.device(device)
    info = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count() or 0,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


def median_ms(
    calls: list[Callable[[], object]], warmup: int, repeats: int,
    device: torch.device = torch.device("cpu"), idle_ms: float = 0.0,
) -> list[float]:
    """Median wall time of each call. Repetitions go round-robin over the calls, so a burst of
    load from another process spreads over all of them instead of spoiling one. With `idle_ms`
    the machine idles that long before each timed call, as it does between a server's requests
    (a call after an idle gap is slower than one in a tight loop: caches and clocks cool down)."""
    if not (math.isfinite(idle_ms) and 0 <= idle_ms <= 10_000):
        raise ValueError(f"idle_ms must be in [0, 10000], got {idle_ms!r}")
    _check_count("warmup", warmup, 0)
    _check_count("repeats", repeats, 1)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for call in calls:
        for _ in range(warmup):
            call()
    sync()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for call, samples in zip(calls, times, strict=True):
            if idle_ms:
                time.sleep(idle_ms / 1000.0)
            start = time.perf_counter_ns()
            call()
            sync()
            samples.append((time.perf_counter_ns() - start) / 1e6)
    return [statistics.median(samples) for samples in times]


def _check_count(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def profile_model(
    model: nn.Module,
    spec: ArchSpec,
    batch_size: int = 1,
    warmup: int = 5,
    repeats: int = 20,
    device: str | torch.device = "cpu",
    idle_ms: float = 0.0,
) -> dict:
    """Time every stage of `model` on its real input; one variant entry of a profile document
    (eager PyTorch; `pipeline.onnx_profile.profile_onnx` times ONNX Runtime).

    Args:
        model: a network with `ordered_stages()`; its inference form (BatchNorm folded, as
            serving runs it: `pipeline.models.inference`) is what gets timed, on `device`.
        spec: its architecture, for the input shape and split point names.
        batch_size: images per forward pass.
        warmup: untimed runs before timing each stage.
        repeats: timed runs per stage; the median is kept.
        device: where to run.
        idle_ms: idle time before each timed call (`median_ms`).

    Returns:
        {"spec", "layers", "head_ms", "tail_ms", "total_ms", "whole_ms"} as in the module
        docstring.
    """
    _check_count("batch_size", batch_size, 1)
    _check_count("warmup", warmup, 0)
    _check_count("repeats", repeats, 1)
    device = torch.device(device)
    model = inference_form(model).to(device)
    stages = model.ordered_stages()
    splits = split_points(spec)
    if [name for name, _ in stages] != splits[1:]:
        raise ValueError(f"model stages {[n for n, _ in stages]} do not match spec {spec.arch}")
    generator = torch.Generator().manual_seed(0)
    shape = (batch_size, spec.in_channels, spec.input_size, spec.input_size)
    x = torch.randn(shape, generator=generator).to(device)
    with torch.inference_mode():
        # Warm the whole network first: one-off kernel selection and allocation happen here.
        for _ in range(max(warmup, 1)):
            model(x)
        calls = []
        stage_input = x
        for _, module in stages:
            calls.append(functools.partial(module, stage_input))
            stage_input = module(stage_input)
        calls.append(functools.partial(model, x))
        *stage_ms, whole_ms = median_ms(calls, warmup, repeats, device, idle_ms)
    entry = timings_from_layers([name for name, _ in stages], stage_ms, whole_ms)
    return {"spec": spec.to_dict(), **entry}


def timings_from_layers(
    names: list[str], layer_ms: list[float], whole_ms: float | None = None
) -> dict:
    """A variant entry (layers, cumulative head_ms/tail_ms, total_ms) from per-layer times.

    Args:
        names: the split point each layer produces, in forward order, ending with `output`.
        layer_ms: each layer's time.
        whole_ms: the time of one whole forward pass, if measured.
    """
    if len(names) != len(layer_ms) or not names or names[-1] != "output" or "input" in names:
        raise ValueError(f"layers must be named in order up to 'output', got {names}")
    layers = [{"name": name, "ms": _time(f"layer {name!r}", ms)} for name, ms in zip(
        names, layer_ms, strict=True)]
    total = math.fsum(layer["ms"] for layer in layers)
    head_ms = {"input": 0.0}
    running = 0.0
    for layer in layers:
        running += layer["ms"]
        head_ms[layer["name"]] = min(running, total)
    head_ms["output"] = total
    tail_ms = {split: total - ms for split, ms in head_ms.items()}
    entry = {"layers": layers, "head_ms": head_ms, "tail_ms": tail_ms, "total_ms": total}
    if whole_ms is not None:
        entry["whole_ms"] = _time("whole_ms", whole_ms)
    return entry


def profile_document(
    variants: dict[str, dict],
    batch_size: int,
    warmup: int,
    repeats: int,
    device: str | torch.device = "cpu",
    runtime: str = DEFAULT_RUNTIME,
    idle_ms: float = 0.0,
) -> dict:
    """Wrap variant entries from `profile_model` (or `profile_onnx`, `runtime` onnxruntime) in a
    measured profile document."""
    doc = {
        "format": FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "batch_size": batch_size,
        "warmup": warmup,
        "repeats": repeats,
        "slowdown": 1.0,
        "derived_from": None,
        "model_form": MODEL_FORM,
        "runtime": runtime,
        "idle_ms": idle_ms,
        "variants": variants,
    }
    validate_profile(doc)
    return doc


def _time(where: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where} must be a number of milliseconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{where} must be a finite time >= 0 ms, got {value!r}")
    return float(value)


def _validate_variant(vid: str, entry: object) -> None:
    where = f"profile variant {vid!r}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be an object")
    missing = {"layers", "head_ms", "tail_ms", "total_ms"} - set(entry)
    if missing:
        raise ValueError(f"{where} lacks keys {sorted(missing)}")
    if not isinstance(entry["layers"], list) or not entry["layers"]:
        raise ValueError(f"{where}: 'layers' must be a non-empty list")
    for i, layer in enumerate(entry["layers"]):
        if not isinstance(layer, dict) or not isinstance(layer.get("name"), str):
            raise ValueError(f"{where}: layer {i} must be an object with a 'name' string")
        _time(f"{where} layer {layer['name']!r}", layer.get("ms"))
    total = _time(f"{where} total_ms", entry["total_ms"])
    if "whole_ms" in entry:
        _time(f"{where} whole_ms", entry["whole_ms"])
    head, tail = entry["head_ms"], entry["tail_ms"]
    if not isinstance(head, dict) or not isinstance(tail, dict):
        raise ValueError(f"{where}: head_ms and tail_ms must be objects split -> ms")
    if set(head) != set(tail) or not {"input", "output"} <= set(head):
        raise ValueError(f"{where}: head_ms, tail_ms need the same splits, with input and output")
    tolerance = _SUM_RTOL * max(total, 1.0)
    for split in head:
        h = _time(f"{where} head_ms[{split!r}]", head[split])
        t = _time(f"{where} tail_ms[{split!r}]", tail[split])
        if abs(h + t - total) > tolerance:
            raise ValueError(f"{where}: head + tail at {split!r} is {h + t}, not total_ms {total}")


def validate_profile(doc: object) -> dict:
    """Check a profile document's structure and values; returns it, or raises ValueError."""
    if not isinstance(doc, dict):
        raise ValueError("a profile must be a JSON object")
    if doc.get("format") != FORMAT:
        raise ValueError(f"not a twostep profile: format {doc.get('format')!r}, not {FORMAT!r}")
    missing = {"machine", "batch_size", "repeats", "slowdown", "variants"} - set(doc)
    if missing:
        raise ValueError(f"profile lacks keys {sorted(missing)}")
    if not isinstance(doc["machine"], dict):
        raise ValueError("profile 'machine' must be an object")
    _check_count("profile batch_size", doc["batch_size"], 1)
    _check_count("profile repeats", doc["repeats"], 1)
    slowdown = doc["slowdown"]
    if isinstance(slowdown, bool) or not isinstance(slowdown, int | float) or not (
        math.isfinite(slowdown) and slowdown > 0
    ):
        raise ValueError(f"profile slowdown must be a finite number > 0, got {slowdown!r}")
    if profile_runtime(doc) not in RUNTIMES:
        raise ValueError(f"profile runtime must be one of {', '.join(RUNTIMES)}, got {doc['runtime']!r}")
    codec = doc.get("codec")
    if codec is not None:
        for key in ("encode_ms", "decode_ms"):
            pair = codec.get(key) if isinstance(codec, dict) else None
            if not isinstance(pair, list) or len(pair) != 2:
                raise ValueError(f"profile codec {key} must be [fixed_ms, ms_per_element]")
            for value in pair:
                _time(f"profile codec {key}", value)
    variants = doc["variants"]
    if not isinstance(variants, dict) or not variants:
        raise ValueError("profile 'variants' must be a non-empty object id -> timings")
    for vid, entry in variants.items():
        _validate_variant(vid, entry)
    return doc


def save_profile(path: str | os.PathLike, doc: dict) -> None:
    """Validate `doc` and write it as JSON atomically (temp file, fsync, rename)."""
    validate_profile(doc)
    write_json_atomic(path, doc)


def load_profile(path: str | os.PathLike) -> dict:
    """Read and validate a profile document; ValueError naming the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"profile {str(path)!r} does not exist")
    if path.stat().st_size > MAX_PROFILE_BYTES:
        raise ValueError(f"profile {path} is larger than {MAX_PROFILE_BYTES >> 20} MiB")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"profile {path} is not valid JSON: {err}") from err
    try:
        validate_profile(doc)
    except ValueError as err:
        raise ValueError(f"profile {path}: {err}") from err
    if doc.get("model_form") != MODEL_FORM:
        warnings.warn(f"profile {path} timed the models as trained, not in the form they are served "
                      "(BatchNorm folded), so it overstates their time by about 15-25%; rerun "
                      "`twostep profile`", stacklevel=2)
    return doc


def codec_timing(config, sizes: tuple[int, ...] = (256, 2048, 16384, 65536), repeats: int = 20,
                 idle_ms: float = 0.0) -> dict:
    """Fit `fixed + per_element x n` (ms) to the encode and decode time of feature maps of `sizes`
    elements with codec `config` (a `CodecConfig`), on this machine's CPU (idling `idle_ms`
    before each timed call, as `median_ms`)."""
    from pipeline.codec import decode_frame, encode_frame

    generator = torch.Generator().manual_seed(0)
    encode, decode, sizes_seen = [], [], []
    for n in sizes:
        # A post-ReLU map (many zeros) of about n elements, shaped (1, C, 16, 16).
        x = torch.relu(torch.randn((1, max(1, n // 256), 16, 16), generator=generator))
        frame = encode_frame(x, config)
        x = x.numpy()  # what a head hands the codec
        enc, dec = median_ms([lambda x=x: encode_frame(x, config), lambda f=frame: decode_frame(f)],
                             2, repeats, idle_ms=idle_ms)
        sizes_seen.append(x.size)
        encode.append(enc)
        decode.append(dec)

    def fit(times: list[float]) -> list[float]:
        slope, intercept = statistics.linear_regression(sizes_seen, times)
        return [max(intercept, 0.0), max(slope, 0.0)]

    return {"encode_ms": fit(encode), "decode_ms": fit(decode),
            "settings": {"bits": config.bits, "per_channel": config.per_channel,
                         "compress": config.compress}}


def codec_ms(doc: dict, which: str, elements: float) -> float:
    """`which` (encode_ms or decode_ms) for a map of `elements` from a profile's codec entry, or 0
    when the profile has none."""
    codec = doc.get("codec")
    if not codec:
        return 0.0
    fixed, per_element = codec[which]
    return float(fixed + per_element * elements)


def derive_profile(edge_doc: dict, slowdown: float) -> dict:
    """A device profile modelled as `slowdown` times slower than the measured `edge_doc`.

    This is the paper's `T_device = gamma x T_edge`. Every time is multiplied by `slowdown`; the
    result records the cumulative factor in `slowdown` and its source in `derived_from`.
    """
    validate_profile(edge_doc)
    if isinstance(slowdown, bool) or not isinstance(slowdown, int | float) or not (
        math.isfinite(slowdown) and 0 < slowdown <= 1e6
    ):
        raise ValueError(f"slowdown must be a finite number in (0, 1e6], got {slowdown!r}")
    factor = float(slowdown)
    doc = copy.deepcopy(edge_doc)
    for entry in doc["variants"].values():
        for layer in entry["layers"]:
            layer["ms"] *= factor
        for key in ("head_ms", "tail_ms"):
            entry[key] = {split: ms * factor for split, ms in entry[key].items()}
        entry["total_ms"] *= factor
        if "whole_ms" in entry:
            entry["whole_ms"] *= factor
    if doc.get("codec"):
        for key in ("encode_ms", "decode_ms"):
            doc["codec"][key] = [value * factor for value in doc["codec"][key]]
    doc["slowdown"] = edge_doc["slowdown"] * factor
    doc["derived_from"] = {
        "hostname": edge_doc["machine"].get("hostname"),
        "created": edge_doc.get("created"),
        "slowdown": factor,
    }
    return validate_profile(doc)


def variant_timings(doc: dict, variant_id: str) -> dict:
    """The timings of one variant in a profile; ValueError listing the known ones if absent."""
    try:
        return doc["variants"][variant_id]
    except KeyError:
        known = ", ".join(sorted(doc["variants"])[:10])
        raise ValueError(f"profile has no variant {variant_id!r}; it has {known}") from None
