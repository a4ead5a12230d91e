"""2-step pruning of a base checkpoint into a series store, in-process and resumable.

The Ray Tune launcher reuses `PruneContext`, `record_variant`, `step2_layers` and the iteration
functions of `pipeline.steps`; this module is the single-process driver.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import torch
from tqdm.auto import tqdm

from pipeline import call_time, prune_schedule
from pipeline.checkpoint import load_checkpoint
from pipeline.codec import CodecConfig
from pipeline.config import PruneConfig
from pipeline.data import DataInfo, Splits, load_splits, normalize
from pipeline.device import resolve_device
from pipeline.layer_times import LayerModel, fit_layer_model, profile_layers
from pipeline.models.registry import ArchSpec
from pipeline.models.staged import StagedNet
from pipeline.series import (
    Measured,
    SeriesError,
    SeriesStore,
    Variant,
    is_series,
    measured,
    variant_id,
)
from pipeline.split import pruned_layer, split_points, total_macs
from pipeline.split_bytes import measure_split_bytes
from pipeline.step1_continue import continue_series
from pipeline.steps import Snapshot, run_step1, run_step2, step2_ladder
from pipeline.train import evaluate, set_threads

Log = Callable[[str], None]


@dataclass
class PruneContext:
    """What every pruning iteration needs: config, data, and the images bytes are measured on."""

    config: PruneConfig
    splits: Splits
    byte_images: torch.Tensor
    teacher: StagedNet | None = None  # the unpruned model, when fine-tuning distils from it

    @property
    def codec(self) -> CodecConfig:
        return prune_codec(self.config)


def prune_codec(config: PruneConfig) -> CodecConfig:
    """How a series pruned with `config` codes its frames (what its manifest's `codec` records)."""
    return CodecConfig(bits=config.codec_bits, per_channel=config.codec_per_channel)


def load_context(config: PruneConfig, info: DataInfo | None = None, splits: Splits | None = None,
                 teacher: StagedNet | None = None) -> PruneContext:
    """Load the data `config` names (with seeded subsets) and pick the byte-measurement images.

    Args:
        info: the base model's normalisation, which replaces the data's own.
        splits: data already loaded (e.g. shipped to a trial on another node); then
            `config.data_dir` is not read.
        teacher: the unpruned model for distillation; loaded from `config.base` when needed
            and not given.
    """
    set_threads(config.threads)
    if splits is None:
        splits = load_splits(config.dataset, config.data_dir, config.val_fraction,
                             config.train_subset, config.test_subset, config.seed)
        if config.val_subset:
            splits.val = splits.val.take(torch.arange(min(config.val_subset, len(splits.val))))
    if info is not None:
        splits.info = info  # normalise exactly as the base model was trained
    images = splits.test.images[: config.bytes_images]
    if config.distill_weight > 0 and teacher is None:
        teacher = load_checkpoint(config.base)[0]
    if teacher is not None:
        teacher = teacher.to(resolve_device(config.device)).eval()
    return PruneContext(config, splits, normalize(images, splits.info), teacher)


def step2_layers(spec: ArchSpec, config: PruneConfig) -> dict[str, list[str]]:
    """Layer to prune -> the chosen split points it sets the size of.

    A conv and the pool after it share one layer, so they share one step-2 series.
    """
    points = [p for p in split_points(spec) if p not in ("input", "output")]
    chosen = list(config.step2_splits) or points
    layers: dict[str, list[str]] = {}
    for split in chosen:
        if split not in points:
            raise ValueError(f"step-2 split {split!r} is not a prunable split point of "
                             f"{spec.arch}; choose from {', '.join(points)}")
        layers.setdefault(pruned_layer(spec, split), []).append(split)
    governed = {p: pruned_layer(spec, p) for p in points}
    return {layer: [p for p in points if governed[p] == layer] for layer in layers}


def describe_variant(
    ctx: PruneContext, model: StagedNet, spec: ArchSpec, *, step: int, iteration: int,
    val_accuracy: float, offered_splits: list[str], layer: str | None = None,
    extra: dict | None = None,
) -> Measured:
    """A manifest entry for a model: test accuracy, MACs, and bytes per offered split."""
    model = model.to(resolve_device(ctx.config.device))
    vid = variant_id(spec.arch, step, iteration, layer)
    return measured({
        "id": vid, "step": step, "layer": layer,
        "split": offered_splits[0] if step == 2 else None,
        "iteration": iteration, "val_accuracy": val_accuracy,
        "test_accuracy": evaluate(model, ctx.splits.test, ctx.splits.info),
        "macs": total_macs(spec),
        "splits": measure_split_bytes(model, spec, ctx.byte_images, offered_splits, ctx.codec,
                                      vid),
        **(extra or {}),
    })


def record_variant(store: SeriesStore, ctx: PruneContext, model: StagedNet, spec: ArchSpec,
                   **fields) -> Variant:
    """`describe_variant`, then add the variant (weights and entry) to the store."""
    return store.add_variant(model, spec, describe_variant(ctx, model, spec, **fields))


# Keys added to PruneConfig after series were made, with the value that series were made with
# where that is not the new default (a series without step1_round_to was cut at any width).
LEGACY_VALUES = {"step1_round_to": 1}
# Keys that change nothing once step 1 is finished (a finished series resumes under any value).
STEP1_ONLY = {"step1_round_to", "step1_time_calls"}
# Keys that set where and how fast it runs, not what it computes: a series resumes under any value
# (on a machine with more cores, or a GPU).
MACHINE_ONLY = {"threads", "device"}


def config_defaults() -> dict:
    """What a series' config reads as for keys added to PruneConfig after it was made."""
    return {**PruneConfig().model_dump(mode="json"), **LEGACY_VALUES}


def open_or_create_store(config: PruneConfig, base_spec: ArchSpec, info: DataInfo) -> SeriesStore:
    """Open the series at `config.out` to resume it, or create it; a series made with another
    config is refused rather than mixed."""
    config_dict = config.model_dump(mode="json")
    if is_series(config.out):
        store = SeriesStore.open(config.out)
        previous = {**config_defaults(), **store.manifest.config}
        ignored = {"step2_splits"} | MACHINE_ONLY | (STEP1_ONLY if store.manifest.step1 else set())
        previous = {k: v for k, v in previous.items() if k not in ignored}
        current = {k: v for k, v in config_dict.items() if k not in ignored}
        if previous != current:
            changed = sorted(k for k in current if previous.get(k) != current[k])
            hint = "".join(f"; it was made with {k} = {previous[k]!r} (--{k.replace('_', '-')} "
                           f"{previous[k]!r} resumes it)" for k in changed if k in LEGACY_VALUES)
            raise SeriesError(f"{config.out} holds a series made with other settings "
                              f"({', '.join(changed)}){hint}; choose another output directory")
        return store
    codec = dataclasses.asdict(prune_codec(config))
    return SeriesStore.create(config.out, base_spec, info.to_dict(), codec, config_dict)


def validation_leak(train: dict | None, config: PruneConfig) -> str | None:
    """Why the base model (trained with `train`, its TrainConfig as a dict) has seen the images
    pruning validates on, or None when they were held out (or nothing says otherwise)."""
    if not train or train.get("dataset") != config.dataset:
        return None
    if train.get("data_dir") not in (None, config.data_dir):
        return None
    held_out = float(train.get("val_fraction", 0.0))
    if held_out == 0.0:
        return "it was trained on the whole training set (val_fraction 0)"
    if held_out != config.val_fraction or int(train.get("seed", 0)) != config.seed:
        return (f"it held out another validation split (val_fraction {held_out:g}, seed "
                f"{train.get('seed', 0)}; pruning uses {config.val_fraction:g}, seed {config.seed})")
    return None


def prepare(config: PruneConfig, log: Log = print) -> tuple[SeriesStore, PruneContext, StagedNet, ArchSpec]:
    """Load the base checkpoint and data, open/create the store, record the base variant."""
    base_model, base_spec, meta = load_checkpoint(config.base)
    leak = validation_leak(meta.get("train"), config)
    if leak:
        # The base's validation accuracy is then optimistic: step 1 measures its budget against
        # images the base memorised and the fine-tuned models no longer see, and stops early.
        log(f"warning: the base model has seen the validation images step 1 is judged on: {leak}. "
            f"Train it with --val-fraction {config.val_fraction:g} --seed {config.seed} for a fair budget.")
    info = DataInfo.from_dict(meta["data"]) if "data" in meta else None
    ctx = load_context(config, info)
    if config.step1_continue_from and not is_series(config.out):
        log(f"starting {config.out} from the step-1 iterations of {config.step1_continue_from} ...")
        continue_series(config, base_model, base_spec, config_defaults())
    store = open_or_create_store(config, base_spec, ctx.splits.info)
    if store.manifest.base is None:
        log("measuring the base model ...")
        val = evaluate(base_model, ctx.splits.val, ctx.splits.info)
        entry = record_variant(store, ctx, base_model, base_spec, step=0, iteration=0,
                               val_accuracy=val, offered_splits=split_points(base_spec))
        store.set_field("base", entry.id)
    prices_step1 = config.step1_cost == "latency" and config.mac_weight > 0 and store.manifest.step1 is None
    if prices_step1 and store.manifest.step1_layer_model is None:
        store.set_field(LAYER_MODEL_FIELD, measure_layer_model(base_model, base_spec, ctx.splits.info,
                                                               store.manifest.base, log))
    return store, ctx, base_model, base_spec


LAYER_MODEL_FIELD = "step1_layer_model"


def measure_layer_model(model: StagedNet, spec: ArchSpec, info: DataInfo, variant: str,
                        log: Log = print) -> dict:
    """The base's layer times on ONNX Runtime (one thread, batch 1) fitted to a per-MAC and
    per-weight cost: what `step1_cost = "latency"` prices a filter by, kept in the manifest so that
    a resumed run prices filters as the run it continues did."""
    profile = profile_layers(model, spec, info, variant=variant)
    fitted = fit_layer_model([profile])
    if fitted.us_per_mmac == 0 and fitted.us_per_kweight == 0:
        raise ValueError(f"the base's layer times ({profile.run_us:.0f} us a call) fit no cost per MAC "
                         "or per weight, only per layer: nothing to price filters by; prune with "
                         "step1_cost = \"macs\" (or measure on a quieter machine)")
    log(f"step 1 prices a filter by its time on ONNX Runtime: {fitted.us_per_mmac:.2f} us per million "
        f"MACs + {fitted.us_per_kweight:.3f} us per thousand weights (the base's layers, "
        f"{profile.run_us:.0f} us a call)")
    return {**fitted.to_dict(), "runtime": "onnxruntime", "threads": 1, "batch_size": 1,
            "base_run_us": profile.run_us, "measured": datetime.now(UTC).isoformat(timespec="seconds")}


def stored_layer_model(store: SeriesStore) -> LayerModel | None:
    recorded = store.manifest.step1_layer_model
    return LayerModel.from_dict(recorded) if recorded else None


def prune_step1(store: SeriesStore, ctx: PruneContext, progress: bool = True,
                log: Log = print) -> tuple[StagedNet, ArchSpec]:
    """Run (or resume) step 1; every accepted iteration is a variant; returns the kept model."""
    if store.manifest.step1 is not None:
        model, spec, _ = store.load_model(store.manifest.step1)
        return model, spec
    base = store.manifest.base_variant
    done = store.manifest.step(1)
    last = max(done, key=lambda v: v.iteration) if done else base
    model, spec, _ = store.load_model(last.id)
    bar = tqdm(desc="step 1", total=ctx.config.step1_max_iterations, initial=last.iteration,
               disable=not progress, unit="it")
    kept = last
    for snap in run_step1(model, spec, ctx.splits, ctx.config, base.val_accuracy,
                          start_iteration=last.iteration, base_spec=base.arch_spec, teacher=ctx.teacher,
                          layer_model=stored_layer_model(store)):
        bar.update(1)
        bar.set_postfix(val=f"{snap.val_accuracy:.4f}",
                        macs=f"{base.macs / snap.macs:.2f}x")
        if snap.accepted:
            kept = record_variant(store, ctx, snap.model, snap.spec, step=1,
                                  iteration=snap.iteration, val_accuracy=snap.val_accuracy,
                                  offered_splits=split_points(snap.spec),
                                  extra={"removed": snap.removed,
                                         "recovered_from": snap.recovered_from})
        if snap.recovered_from is not None:
            log(f"step 1 iteration {snap.iteration}: validation {snap.recovered_from:.4f} -> "
                f"{snap.val_accuracy:.4f} after {ctx.config.step1_recovery_epochs:g} recovery epochs")
        if snap.stop_reason:
            log(f"step 1 stopped at iteration {snap.iteration}: {snap.stop_reason}")
    bar.close()
    if kept.step != 1:
        log("step 1 kept no iteration (the first already broke the budget); "
            "step 2 starts from the base model")
    store.set_field("step1", kept.id)
    model, spec, _ = store.load_model(kept.id)
    return model, spec


def time_step1_calls(store: SeriesStore, config: PruneConfig, log: Log = print) -> dict | None:
    """At the end of step 1 (`config.step1_time_calls`): time the base and every step-1 model on
    ONNX Runtime as a device calls them (`pipeline.call_time`) and record it in the manifest,
    unless it already holds those figures for exactly these variants (a resumed run)."""
    step1 = [v.id for v in store.manifest.step(1)]
    recorded = store.manifest.step1_call_times or {}
    if not config.step1_time_calls or not step1 or sorted(recorded.get("variants", {})) == sorted(step1):
        return None
    document = call_time.step1_call_times(store)
    store.set_field(call_time.FIELD, document)
    if log is not None:
        log("\n".join(call_time.format_call_times(store.manifest)))
    return document


def prune_step2_layer(
    store: SeriesStore, ctx: PruneContext, layer: str, offered: list[str],
    step1_model: StagedNet, step1_spec: ArchSpec, on_snapshot: Callable[[Snapshot], None] | None = None,
) -> list[Variant]:
    """Run (or resume) the step-2 ladder of one layer; returns its variants' entries."""
    ladder = step2_ladder(step1_spec, layer, ctx.config)
    entries = [v for v in store.manifest.step(2) if v.layer == layer]
    done = len(entries)
    model, spec = step1_model, step1_spec
    if done:
        model, spec, _ = store.load_model(variant_id(step1_spec.arch, 2, done, layer))
    for snap in run_step2(model, spec, layer, ctx.splits, ctx.config, ladder, done, teacher=ctx.teacher):
        entries.append(record_variant(
            store, ctx, snap.model, snap.spec, step=2, iteration=snap.iteration,
            val_accuracy=snap.val_accuracy, offered_splits=offered, layer=layer,
            extra={"ladder": ladder}))
        if on_snapshot is not None:
            on_snapshot(snap)
    return entries


def announce_schedule(store: SeriesStore, ctx: PruneContext, base_model: StagedNet, base_spec: ArchSpec,
                      steps: str = "both", log: Log = print) -> None:
    """Log what the run will do and about how long it takes (`pipeline.prune_schedule`)."""
    config, finished = ctx.config, store.manifest.step1 is not None
    model, spec = (store.load_model(store.manifest.step1)[:2]) if finished else (base_model, base_spec)
    layers = step2_layers(spec, config) if steps != "1" else {}
    done2 = len(store.manifest.step(2))
    left2 = max(0, sum(len(step2_ladder(spec, layer, config)) for layer in layers) - done2)
    done1 = max((v.iteration for v in store.manifest.step(1)), default=0)
    found = prune_schedule.estimate(model, ctx.splits, config, left2, ctx.teacher, done1)
    for line in prune_schedule.describe(config, ctx.splits, found, layers, finished or steps == "2"):
        log(line)


def prune_series(config: PruneConfig, steps: str = "both", progress: bool = True,
                 log: Log = print) -> SeriesStore:
    """The whole in-process procedure: base -> step 1 -> step 2 for every chosen layer."""
    if steps not in ("1", "2", "both"):
        raise ValueError(f"steps must be 1, 2 or both, got {steps!r}")
    store, ctx, base_model, base_spec = prepare(config, log)
    if steps == "2" and store.manifest.step1 is None:
        raise SeriesError(f"{config.out} has no finished step 1; run --step 1 (or both) first")
    announce_schedule(store, ctx, base_model, base_spec, steps, log)
    step1_model, step1_spec = prune_step1(store, ctx, progress, log)
    time_step1_calls(store, config, log)
    if steps == "1":
        return store
    layers = step2_layers(step1_spec, config)
    total = sum(len(step2_ladder(step1_spec, layer, config)) for layer in layers)
    already = len(store.manifest.step(2))
    bar = tqdm(desc="step 2", total=total, initial=already, disable=not progress, unit="it")
    for layer, offered in layers.items():
        bar.set_postfix(layer=layer)
        prune_step2_layer(store, ctx, layer, offered, step1_model, step1_spec,
                          on_snapshot=lambda snap: bar.update(1))
    bar.close()
    return store
