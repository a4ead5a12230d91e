"""Tune trainables: one pruning procedure per trial, one report (and checkpoint) per iteration.

Each trainable turns the Tune config dict back into a `PruneConfig` on its first line, then runs
the iteration functions of `pipeline.steps` with the same derived seeds as the in-process
driver, so a trial yields the same variants. After every iteration it reports metrics plus a
trial checkpoint (`tune.collect` format); the driver turns the checkpoint into a series variant.
When Tune restarts a trial whose worker died, `tune.get_checkpoint()` returns the trial's last
checkpoint and the trial continues after that iteration: nothing is repeated or lost.

Everything a trial reads arrives through the object store (`tune.with_parameters`), so a trial
on any node of a cluster needs no file of the driver's: start models (and the distillation
teacher) as safetensors bytes keyed by sha256 and checked against it, and the data as the
driver's loaded splits (numpy arrays, `pipeline.data.splits_to_arrays`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch
from ray import tune
from torch import nn

from pipeline.checkpoint import load_checkpoint
from pipeline.config import PruneConfig, build_config
from pipeline.data import DataInfo, splits_from_arrays
from pipeline.layer_times import LayerModel
from pipeline.models.registry import ArchSpec
from pipeline.prune_job import PruneContext, describe_variant, load_context
from pipeline.schedule import step1_filters_per_iteration
from pipeline.series import Measured
from pipeline.split import split_points, total_macs
from pipeline.steps import derive_seed, judge_step1, run_step2, step1_iteration, step1_mac_limit
from tune.collect import read_trial_checkpoint, write_trial_checkpoint


def _setup(trial_config: dict, data: dict,
           start_blobs: dict[str, bytes]) -> tuple[PruneConfig, dict, PruneContext]:
    job = trial_config["job"]
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one INFO line per checkpoint
    config = build_config(PruneConfig, {**trial_config["prune"], **job["overrides"]})
    teacher = None
    if job.get("teacher"):
        teacher = _load_blob(start_blobs, job["teacher"])[0]
    ctx = load_context(config, DataInfo.from_dict(job["data"]), splits=splits_from_arrays(data),
                       teacher=teacher)
    torch.set_num_threads(config.threads or job["threads"])
    return config, job, ctx


def _load_blob(start_blobs: dict[str, bytes], sha256: str) -> tuple[nn.Module, ArchSpec, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        path.write_bytes(start_blobs[sha256])
        return load_checkpoint(path, expected_sha256=sha256)


def _resume(job: dict, start_blobs: dict[str, bytes]) -> tuple[nn.Module, ArchSpec, int, str | None]:
    """(model, spec, iteration reached, stop reason): from the trial's last checkpoint when
    Tune restored it, else from the job's start variant."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            model, spec, entry, stop_reason = read_trial_checkpoint(directory)
        return model, spec, entry.iteration, stop_reason
    start = job["start"]
    model, spec, _ = _load_blob(start_blobs, start["sha256"])
    return model, spec, start["iteration"], None


def _report(metrics: dict, model: nn.Module, spec: ArchSpec, entry: Measured,
            stop_reason: str | None = None) -> None:
    # report() copies the directory to the run's storage before it returns
    with tempfile.TemporaryDirectory() as tmp:
        write_trial_checkpoint(tmp, model, spec, entry, stop_reason)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _maybe_fail(job: dict, iteration: int) -> None:
    """Test hook: kill this worker process once, right after reporting `after_iteration`.

    The marker file makes it happen on the first attempt only (created atomically)."""
    fail = job.get("fail_once")
    if not fail or iteration != fail["after_iteration"]:
        return
    try:
        os.close(os.open(fail["marker"], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os._exit(1)


def step1_trainable(trial_config: dict, start_blobs: dict[str, bytes], data: dict) -> None:
    """Step 1 on the whole network until the budget, the MAC target or the iteration limit.

    Accepted iterations report a checkpoint; a rejected one (rolled back) only metrics.
    """
    config, job, ctx = _setup(trial_config, data, start_blobs)
    model, spec, iteration, stop_reason = _resume(job, start_blobs)
    if stop_reason:
        return
    base_spec = ArchSpec.from_dict(job["base_spec"])
    base_macs = total_macs(base_spec)
    per_iteration = step1_filters_per_iteration(sum(base_spec.widths), config.step1_divisor)
    layer_model = LayerModel.from_dict(job["layer_model"]) if job.get("layer_model") else None
    if config.step1_cost == "latency" and config.mac_weight > 0 and layer_model is None:
        raise ValueError(f"step1_cost 'latency': the series at {config.out} has no step1_layer_model "
                         "(the launch fits it from the base before step 1)")
    while iteration < config.step1_max_iterations:
        iteration += 1
        generator = torch.Generator().manual_seed(derive_seed(config.seed, "step1", str(iteration)))
        snap = step1_iteration(model, spec, ctx.splits, config, generator, per_iteration, iteration,
                               teacher=ctx.teacher, mac_limit=step1_mac_limit(base_macs, config),
                               layer_model=layer_model)
        judge_step1(snap, job["baseline_val"], base_macs, ctx.splits, config, generator, ctx.teacher)
        accepted, stop_reason = snap.accepted, snap.stop_reason
        metrics = {
            "phase": "step1", "iteration": iteration, "val_accuracy": snap.val_accuracy,
            "macs": snap.macs, "mac_reduction": base_macs / snap.macs, "accepted": accepted,
            "filters": sum(snap.spec.widths), "stop_reason": stop_reason or "",
        }
        if accepted:
            entry = describe_variant(ctx, snap.model, snap.spec, step=1, iteration=iteration,
                                     val_accuracy=snap.val_accuracy,
                                     offered_splits=split_points(snap.spec),
                                     extra={"removed": snap.removed,
                                            "recovered_from": snap.recovered_from})
            metrics.update(test_accuracy=entry.test_accuracy, variant=entry.id)
            _report(metrics, snap.model, snap.spec, entry, stop_reason)
        else:
            tune.report(metrics)
        _maybe_fail(job, iteration)
        if not accepted or stop_reason:
            return
        model, spec = snap.model, snap.spec


def step2_trainable(trial_config: dict, start_blobs: dict[str, bytes], data: dict) -> None:
    """Step 2 of one layer down its width ladder; every iteration is a checkpoint (variant)."""
    config, job, ctx = _setup(trial_config, data, start_blobs)
    model, spec, done, _ = _resume(job, start_blobs)
    layer, ladder, offered = job["layer"], job["ladder"], job["offered"]
    for snap in run_step2(model, spec, layer, ctx.splits, config, ladder, done, teacher=ctx.teacher):
        entry = describe_variant(ctx, snap.model, snap.spec, step=2, iteration=snap.iteration,
                                 val_accuracy=snap.val_accuracy, offered_splits=offered,
                                 layer=layer, extra={"ladder": ladder})
        metrics = {
            "phase": "step2", "layer": layer, "split": offered[0], "iteration": snap.iteration,
            "width": ladder[snap.iteration - 1], "val_accuracy": snap.val_accuracy,
            "test_accuracy": entry.test_accuracy, "macs": snap.macs,
            "mac_reduction": job["base_macs"] / snap.macs,
            "bytes_sent": entry.splits[offered[0]].bytes_mean, "variant": entry.id,
        }
        _report(metrics, snap.model, snap.spec, entry)
        _maybe_fail(job, snap.iteration)
