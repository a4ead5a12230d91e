"""What a Tune run still has to do, read from the series store (pure: no Ray import).

The store is the source of truth for resuming an interrupted run: a finished step 1 is skipped,
a complete step-2 ladder is skipped, and a partial ladder restarts after its last recorded
variant. A trial is described by a JSON-able *job* dict (it crosses into the trial as part of
the Tune config and is written to the trial's params.json):

    kind      "step1" or "step2"
    key       unique name of the trial: "step1", "step1-d8-b0.02" (search), "step2-conv3_1"
    start     {"variant", "sha256", "iteration"}: the model the trial starts from and the
              iteration of its procedure it has reached (0 for a step-2 ladder starting at the
              step-1 model); the variant's weights travel as bytes, see launch.py
    data      the series' data info (normalisation exactly as the base model was trained)
    threads   torch intra-op threads for the trial
    overrides PruneConfig keys this trial changes (step-1 search), else {}
    base_macs MACs of the base model (progress shows the reduction)
    step 1:   base_spec, baseline_val (the base model's validation accuracy)
    step 2:   layer, offered (the split points the layer governs), ladder (widths to visit)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from pipeline.config import PruneConfig
from pipeline.models.registry import ArchSpec
from pipeline.series import SeriesError, SeriesStore, Variant, variant_id
from pipeline.steps import step2_ladder

SEARCH_METRICS = ("macs", "val_accuracy")


@dataclass(frozen=True)
class TrialResources:
    """What every trial reserves: CPUs, GPUs (fractions below 1 share a GPU) and custom
    resources such as {"gpu_pool": 1}. Torch inside the trial uses floor(cpus) threads."""

    cpus: float = 1.0
    gpus: float = 0.0
    custom: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.cpus, int | float) or not 0 <= self.cpus <= 4096:
            raise ValueError(f"cpus per trial must be in [0, 4096], got {self.cpus!r}")
        if not isinstance(self.gpus, int | float) or not 0 <= self.gpus <= 64:
            raise ValueError(f"gpus per trial must be in [0, 64], got {self.gpus!r}")
        if self.gpus > 1 and not float(self.gpus).is_integer():
            raise ValueError(f"gpus per trial above 1 must be a whole number (Ray shares a GPU "
                             f"only in fractions below 1), got {self.gpus!r}")
        if self.cpus == 0 and self.gpus == 0 and not self.custom:
            raise ValueError("a trial must reserve some CPUs, GPUs or custom resources")
        for name, amount in self.custom.items():
            if (name.upper() in ("CPU", "GPU") or not isinstance(amount, int | float)
                    or not math.isfinite(amount) or amount < 0):
                raise ValueError(f"bad custom resource {name!r}: {amount!r}")

    @property
    def threads(self) -> int:
        return max(1, math.floor(self.cpus))

    def to_ray(self) -> dict[str, float]:
        """The dict `tune.with_resources` takes."""
        return {"cpu": self.cpus, "gpu": self.gpus, **self.custom}


@dataclass(frozen=True)
class Step1Search:
    """Several step-1 trials over a grid of settings; the best one becomes the series' step 1.

    Metrics:
        macs: the fewest MACs among candidates whose kept model's validation accuracy is within
            the configured `step1_budget` of the base model (the most accurate one if none is);
            ties go to the higher validation accuracy.
        val_accuracy: the highest validation accuracy of the kept model; ties go to fewer MACs.
    """

    divisors: tuple[int, ...] = ()
    budgets: tuple[float, ...] = ()
    metric: str = "macs"

    def __post_init__(self):
        object.__setattr__(self, "divisors", tuple(self.divisors))
        object.__setattr__(self, "budgets", tuple(self.budgets))
        if self.metric not in SEARCH_METRICS:
            raise ValueError(f"unknown search metric {self.metric!r}; choose one of "
                             f"{', '.join(SEARCH_METRICS)}")
        if not self.divisors and not self.budgets:
            raise ValueError("a step-1 search needs divisors and/or budgets to try")

    def candidates(self, config: PruneConfig) -> dict[str, dict]:
        """Candidate key -> the PruneConfig overrides it tries (validated by PruneConfig)."""
        out = {}
        for divisor, budget in itertools.product(self.divisors or (config.step1_divisor,),
                                                 self.budgets or (config.step1_budget,)):
            overrides = {"step1_divisor": int(divisor), "step1_budget": float(budget)}
            config.replace(**overrides)  # range checks
            out[f"step1-d{int(divisor)}-b{float(budget):g}"] = overrides
        return out


def config_dict(config: PruneConfig) -> dict:
    """The config as a dict for the Tune boundary (JSON-able: the split tuple becomes a list)."""
    return config.model_dump(mode="json")


def start_of(entry: Variant) -> dict:
    return {"variant": entry.id, "sha256": entry.sha256, "iteration": entry.iteration}


def step1_entries(store: SeriesStore) -> list[Variant]:
    """The contiguous run of step-1 variants i1, i2, ... in the store, in order."""
    by_iteration = {v.iteration: v for v in store.manifest.step(1)}
    out = []
    while len(out) + 1 in by_iteration:
        out.append(by_iteration[len(out) + 1])
    return out


def step1_finished(entries: list[Variant], base: Variant, config: PruneConfig) -> bool:
    """Whether recorded step-1 variants already end the procedure (a run that died before the
    driver marked step 1 finished): the last accepted iteration hit the iteration limit or
    the MAC target. A rejected iteration is never recorded; re-running it rejects it again."""
    if config.step1_max_iterations == 0:
        return True
    if not entries:
        return False
    last = entries[-1]
    if last.iteration >= config.step1_max_iterations:
        return True
    target = config.step1_target_mac_reduction
    return bool(target) and base.macs / last.macs >= target


def step1_job(key: str, store: SeriesStore, base: Variant, entries: list[Variant], threads: int,
              overrides: dict | None = None, layer_model: dict | None = None) -> dict:
    """The job of a step-1 trial that continues after `entries` (or starts at the base);
    `layer_model` is the series' `step1_layer_model` (a search candidate's own store has none)."""
    start = entries[-1] if entries else base
    return {
        "kind": "step1", "key": key, "start": start_of(start), "data": store.manifest.data,
        "threads": threads, "overrides": dict(overrides or {}), "base_macs": base.macs,
        "base_spec": store.manifest.base_spec, "baseline_val": base.val_accuracy,
        "layer_model": layer_model,
    }


def step2_jobs(store: SeriesStore, step1: Variant, layers: dict[str, list[str]],
               config: PruneConfig, threads: int) -> list[dict]:
    """One job per layer whose ladder is not complete in the store, in `layers` order."""
    spec = step1.arch_spec
    base = store.manifest.base_variant
    jobs = []
    for layer, offered in layers.items():
        ladder = step2_ladder(spec, layer, config)
        done = step2_done(store, layer)
        if done >= len(ladder):
            continue
        recorded = store.get(variant_id(spec.arch, 2, done, layer)) if done else None
        recorded_ladder = getattr(recorded, "ladder", ladder)
        if recorded_ladder != ladder:
            raise SeriesError(f"step-2 variants of {layer} in {store.directory} follow the "
                              f"ladder {recorded_ladder}, not {ladder}")
        jobs.append({
            "kind": "step2", "key": f"step2-{layer}",
            "start": {**start_of(recorded or step1), "iteration": done},
            "data": store.manifest.data, "threads": threads, "overrides": {},
            "base_macs": base.macs, "layer": layer, "offered": list(offered), "ladder": ladder,
        })
    return jobs


def step2_done(store: SeriesStore, layer: str) -> int:
    """How many iterations of `layer`'s ladder are recorded, counting i1, i2, ... up to a gap."""
    have = {v.iteration for v in store.manifest.step(2) if v.layer == layer}
    done = 0
    while done + 1 in have:
        done += 1
    return done


def choose_step1(candidates: dict[str, Variant], baseline_val: float, config: PruneConfig,
                 metric: str) -> str:
    """The winning candidate key, given key -> the kept entry (its val_accuracy and macs)."""
    if not candidates:
        raise ValueError("no step-1 candidates to choose from")
    if metric == "val_accuracy":
        return max(candidates, key=lambda k: (candidates[k].val_accuracy, -candidates[k].macs))
    if metric != "macs":
        raise ValueError(f"unknown search metric {metric!r}; choose one of {', '.join(SEARCH_METRICS)}")
    floor = baseline_val - config.step1_budget
    within = {k: v for k, v in candidates.items() if v.val_accuracy >= floor}
    if not within:
        return max(candidates, key=lambda k: candidates[k].val_accuracy)
    return min(within, key=lambda k: (within[k].macs, -within[k].val_accuracy))


def variant_order(spec: ArchSpec):
    """Sort key for the canonical manifest order: base, step 1 by iteration, step 2 by layer in
    network order then iteration (the order of the in-process run over all split points)."""
    layer_index = {name: i for i, name in enumerate(spec.group_names)}

    def key(entry: Variant) -> tuple:
        return (entry.step, layer_index.get(entry.layer, -1), entry.iteration)

    return key
