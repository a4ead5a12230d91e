"""A variant's latency profile timed with ONNX Runtime, the way the serving path calls it.

Per-stage sessions would each add ONNX Runtime's per-call cost and lose the fusions of a whole
graph, so this times what a device or tail replica actually runs: the head graph (uint8 pixels
to the features at the split, `pipeline.onnx_graphs`) at each split asked for, and at `output`
(the whole model). `head_ms[split]` is that measured time; between two measured splits the time
is spread over the stages in proportion to their MACs (a pool, with none, gets a small even
share), so the profile keeps the per-layer form of `pipeline.profiler` (head + tail == total).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from pipeline.data import DataInfo
from pipeline.models.registry import ArchSpec
from pipeline.onnx_graphs import head_graph
from pipeline.onnx_session import GraphRunner
from pipeline.profiler import median_ms, timings_from_layers
from pipeline.split import split_points, stage_costs


def _spread(names: list[str], macs: dict[str, int], measured: dict[str, float]) -> list[float]:
    """Per-stage times whose cumulative sums hit `measured` (split -> head time) at its splits."""
    layer_ms, done, previous = [], 0.0, 0
    marks = [i for i, name in enumerate(names) if name in measured]
    for end in marks:
        segment = names[previous: end + 1]
        target = max(measured[names[end]], done)  # never negative: noise between two splits
        weights = np.array([macs[name] for name in segment], dtype=float)
        weights += max(weights.sum(), 1.0) * 0.02 / len(segment)
        layer_ms.extend((target - done) * weights / weights.sum())
        done, previous = target, end + 1
    return [float(ms) for ms in layer_ms]


def profile_onnx(model: nn.Module, spec: ArchSpec, splits: list[str] | None = None, batch_size: int = 1,
                 warmup: int = 5, repeats: int = 20, threads: int = 1, idle_ms: float = 0.0) -> dict:
    """Time `model`'s ONNX head at each of `splits` (default: every split) and at `output`.

    Returns:
        a variant entry as `pipeline.profiler.profile_model` gives, plus "measured_splits".
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    names = split_points(spec)[1:]
    wanted = [s for s in names if s == "output" or splits is None or s in splits]
    shape = (spec.in_channels, spec.input_size, spec.input_size)
    info = DataInfo("timing", spec.in_channels, spec.num_classes, spec.input_size,
                    (0.0,) * spec.in_channels, (1.0,) * spec.in_channels, ())
    pixels = np.random.default_rng(0).integers(0, 256, (batch_size, *shape), dtype=np.uint8)
    runners = [GraphRunner(head_graph(model, shape, info, split), threads) for split in wanted]
    calls = [lambda run=run: run(pixels) for run in runners]
    times = median_ms(calls, warmup, repeats, idle_ms=idle_ms)
    measured = dict(zip(wanted, times, strict=True))
    macs = {c.name: c.macs for c in stage_costs(spec)}
    entry = timings_from_layers(names, _spread(names, macs, measured), measured["output"])
    return {"spec": spec.to_dict(), **entry, "measured_splits": wanted}
