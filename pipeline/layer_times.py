"""Where a model's device call goes, layer by layer, and a linear model of a layer's time.

ONNX Runtime's own profiler times every node of the whole-model graph (uint8 pixels to logits,
BatchNorm folded: what a device runs, `pipeline.call_time.onnx_model_call`); nodes are summed per
stage of the architecture (the graph names them `/head/head.N/...`, stage N). A conv stage's time
is fitted as

    us = us_per_mmac * MMACs + us_per_kweight * thousands of weights + us_per_layer

because a MAC is not the whole cost of a layer at batch 1: a late VGG layer at 2x2 pixels uses
each of its weights four times, so it runs at the speed its weights stream from memory, not at
the speed of its arithmetic. What no stage owns (the input's normalisation, layout reorders) and
ONNX Runtime's own time between nodes are per call, whatever the widths: together they bound the
time reduction any MAC cut can give (`TimeTerms`).
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from pipeline.data import DataInfo
from pipeline.models.layout import conv_macs
from pipeline.models.registry import ArchSpec

STAGE_NODE = re.compile(r"^/head/head\.(\d+)/")
CALLS = 200


@dataclass
class StageTime:
    """One stage of one model: its MACs, its weights (conv and classifier) and its nodes' time."""

    stage: str
    macs: int
    weights: int
    us: float


@dataclass
class LayerProfile:
    """A model's call: `run_us` (ONNX Runtime's run, median) = the stages' nodes + `other_us` (nodes
    of no stage) + `between_us` (ONNX Runtime's time between nodes)."""

    variant: str
    run_us: float
    stages: list[StageTime]
    other_us: float
    macs: int = 0
    calls: int = CALLS

    @property
    def node_us(self) -> float:
        return sum(s.us for s in self.stages) + self.other_us

    @property
    def between_us(self) -> float:
        return max(0.0, self.run_us - self.node_us)

    def to_dict(self) -> dict:
        return {**asdict(self), "node_us": self.node_us, "between_us": self.between_us}


@dataclass(frozen=True)
class LayerModel:
    """us = us_per_mmac * MMACs + us_per_kweight * kweights + us_per_layer, for a weighted stage."""

    us_per_mmac: float
    us_per_kweight: float
    us_per_layer: float
    fitted_on: tuple[str, ...] = field(default=())

    def work_us(self, macs: int | float, weights: int | float) -> float:
        """The time that follows a stage's size (its MACs and weights), without the per-layer term."""
        return self.us_per_mmac * macs / 1e6 + self.us_per_kweight * weights / 1e3

    def stage_us(self, macs: int, weights: int) -> float:
        return self.work_us(macs, weights) + self.us_per_layer

    def to_dict(self) -> dict:
        return {"us_per_mmac": self.us_per_mmac, "us_per_kweight": self.us_per_kweight,
                "us_per_layer": self.us_per_layer, "fitted_on": list(self.fitted_on)}

    @classmethod
    def from_dict(cls, data: dict) -> LayerModel:
        return cls(float(data["us_per_mmac"]), float(data["us_per_kweight"]),
                   float(data["us_per_layer"]), tuple(data.get("fitted_on", ())))


def stage_weights(spec: ArchSpec) -> dict[str, int]:
    """Weights per stage (convs and the classifier; BatchNorm folds into them): a conv's MACs
    over its output's pixels."""
    widths = spec.width_of()
    weights = {}
    for stage in spec.layout.stages:
        count = sum(conv_macs(conv, widths, spec.in_channels) // (conv.side * conv.side)
                    for conv in stage.convs)
        if stage.linear is not None:
            count += widths[stage.linear.in_group] * stage.linear.side ** 2 * spec.num_classes
        weights[stage.name] = count
    return weights


def profile_layers(model: nn.Module, spec: ArchSpec, info: DataInfo | None = None, calls: int = CALLS,
                   threads: int = 1, variant: str = "") -> LayerProfile:
    """Run the whole-model graph `calls` times back to back under ONNX Runtime's profiler; the
    median of each node and of the run."""
    from pipeline.call_time import model_graph
    from pipeline.onnx_session import session as ort_session
    from pipeline.split import stage_costs

    if calls < 10:
        raise ValueError(f"calls must be at least 10, got {calls}")
    graph, pixels = model_graph(model, spec, info)
    with tempfile.TemporaryDirectory() as tmp:
        session = ort_session(graph, threads, profile_prefix=str(Path(tmp) / "layers"))
        feed = {session.get_inputs()[0].name: pixels}
        for _ in range(calls):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    stages = spec.layout.stages
    per_node: dict[str, list[float]] = {}
    runs = []
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            per_node.setdefault(name[: -len("_kernel_time")], []).append(event["dur"])
        elif event.get("cat") == "Session" and name == "model_run":
            runs.append(event["dur"])
    warm = max(1, calls // 10)  # the first calls allocate and page in
    stage_us = {s.name: 0.0 for s in stages}
    other = 0.0
    for name, durations in per_node.items():
        us = float(np.median(durations[warm:] or durations))
        match = STAGE_NODE.match(name)
        index = int(match.group(1)) if match else -1
        if 0 <= index < len(stages):
            stage_us[stages[index].name] += us
        else:
            other += us
    macs = {c.name: c.macs for c in stage_costs(spec)}
    weights = stage_weights(spec)
    return LayerProfile(variant, float(np.median(runs[warm:] or runs)),
                        [StageTime(s.name, macs[s.name], weights[s.name], stage_us[s.name]) for s in stages],
                        other, sum(macs.values()), calls)


def fit_layer_model(profiles: list[LayerProfile]) -> LayerModel:
    """Least squares over every weighted stage of `profiles`, no coefficient below zero (a
    negative one is dropped and the rest fitted again)."""
    rows = [s for p in profiles for s in p.stages if s.weights > 0]
    if len(rows) < 3:
        raise ValueError(f"{len(rows)} weighted stages: at least 3 are needed to fit a layer model")
    columns = {"mmac": np.array([s.macs / 1e6 for s in rows]),
               "kweight": np.array([s.weights / 1e3 for s in rows]),
               "layer": np.ones(len(rows))}
    y = np.array([s.us for s in rows])
    kept = list(columns)
    while True:
        x = np.stack([columns[k] for k in kept], axis=1)
        coef = np.linalg.lstsq(x, y, rcond=None)[0]
        if (coef >= 0).all() or len(kept) == 1:
            break
        kept.pop(int(np.argmin(coef)))
    fitted = dict.fromkeys(columns, 0.0) | {k: max(0.0, float(c)) for k, c in zip(kept, coef, strict=True)}
    return LayerModel(fitted["mmac"], fitted["kweight"], fitted["layer"],
                      tuple(p.variant for p in profiles if p.variant))


@dataclass(frozen=True)
class TimeTerms:
    """A model's call split into what scales with MACs, with weights, and what does not."""

    mac_us: float
    weight_us: float
    fixed_us: float  # per weighted layer, pools, nodes of no stage, between nodes
    residual_us: float  # measured less modelled, over the weighted stages

    @property
    def total_us(self) -> float:
        return self.mac_us + self.weight_us + self.fixed_us + self.residual_us


def time_terms(profile: LayerProfile, model: LayerModel) -> TimeTerms:
    weighted = [s for s in profile.stages if s.weights > 0]
    mac_us = sum(model.us_per_mmac * s.macs / 1e6 for s in weighted)
    weight_us = sum(model.us_per_kweight * s.weights / 1e3 for s in weighted)
    per_layer = model.us_per_layer * len(weighted)
    unweighted = sum(s.us for s in profile.stages if s.weights == 0)
    residual = sum(s.us for s in weighted) - mac_us - weight_us - per_layer
    return TimeTerms(mac_us, weight_us, per_layer + unweighted + profile.other_us + profile.between_us,
                     residual)


def format_layer_report(profiles: list[LayerProfile], model: LayerModel) -> list[str]:
    """Per stage of each model: MACs, weights, measured and modelled time; then every model's
    call in terms (MACs, weights, fixed) and each one's time reduction against the first."""
    lines = [f"layer model (fitted on {', '.join(model.fitted_on) or 'the given stages'}): "
             f"{model.us_per_mmac:.2f} us per million MACs + {model.us_per_kweight:.3f} us per thousand "
             f"weights + {model.us_per_layer:.1f} us per layer"]
    for profile in profiles:
        lines += ["", f"{profile.variant}: {profile.run_us:.0f} us a call (ONNX Runtime's run, median of "
                      f"{profile.calls} back to back); {profile.other_us:.0f} us in nodes of no layer, "
                      f"{profile.between_us:.0f} us between nodes",
                  f"  {'stage':<10}{'MMACs':>8}{'kweights':>10}{'us':>8}{'modelled':>10}"]
        for s in profile.stages:
            modelled = f"{model.stage_us(s.macs, s.weights):>10.1f}" if s.weights else f"{'-':>10}"
            lines.append(f"  {s.stage:<10}{s.macs / 1e6:>8.2f}{s.weights / 1e3:>10.1f}{s.us:>8.1f}{modelled}")
    lines += ["", f"  {'variant':<24}{'MACs term':>11}{'weights term':>14}{'fixed':>8}{'residual':>10}"
                  f"{'call':>8}   (us)"]
    terms = [time_terms(p, model) for p in profiles]
    for profile, t in zip(profiles, terms, strict=True):
        lines.append(f"  {profile.variant:<24}{t.mac_us:>11.0f}{t.weight_us:>14.0f}{t.fixed_us:>8.0f}"
                     f"{t.residual_us:>10.0f}{profile.run_us:>8.0f}")
    base, first = profiles[0], terms[0]
    for profile, t in zip(profiles[1:], terms[1:], strict=True):
        mac_cut = base.macs / profile.macs
        time_cut = base.run_us / profile.run_us
        weights = sum(s.weights for s in profile.stages)
        weight_cut = sum(s.weights for s in base.stages) / weights
        lines.append(f"  {profile.variant} against {base.variant}: {mac_cut:.2f}x fewer MACs, "
                     f"{weight_cut:.2f}x fewer weights, {time_cut:.2f}x less time "
                     f"({time_cut / mac_cut:.2f} of the MAC cut); "
                     f"MACs term {_ratio(first.mac_us, t.mac_us)}, "
                     f"weights term {_ratio(first.weight_us, t.weight_us)}, "
                     f"fixed {_ratio(first.fixed_us, t.fixed_us)}")
    if first.fixed_us > 0:
        lines.append(f"  what no width changes, {first.fixed_us:.0f} us of {base.run_us:.0f}: no cut takes "
                     f"{base.variant}'s call below it, so its time falls "
                     f"{base.run_us / first.fixed_us:.1f}x at most")
    return lines


def _ratio(before: float, after: float) -> str:
    """`before / after` as "2.43x", or "n/a" where the fit gives the term no time."""
    return f"{before / after:.2f}x" if before > 0 and after > 0 else "n/a"
