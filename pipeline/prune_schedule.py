"""The pruning schedule, said before a long run: what each step will do and about how long.

The time is extrapolated from a few fine-tuning steps and one evaluation batch of the model the
run starts from, timed here: an iteration costs its fine-tuning batches (the teacher's forward
pass included when distilling), the Taylor ranking batches, one pass over validation and one
over test. Step-1 models shrink as it goes, so the step-1 figure for `step1_max_iterations`
iterations is an upper bound; the run usually stops earlier, at its MAC target or its budget.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.config import PruneConfig
from pipeline.data import Splits, iterate_batches
from pipeline.train import make_optimizer

TIMED_STEPS = 3


@dataclass(frozen=True)
class ScheduleEstimate:
    step_s: float  # one fine-tuning batch (forward, backward, update)
    eval_s: float  # one evaluation batch of 512
    step1_iteration_s: float
    step2_iteration_s: float
    step1_iterations: int
    step2_iterations: int

    @property
    def step1_s(self) -> float:
        return self.step1_iteration_s * self.step1_iterations

    @property
    def step2_s(self) -> float:
        return self.step2_iteration_s * self.step2_iterations


def _timed_steps(model: nn.Module, splits: Splits, config: PruneConfig, teacher: nn.Module | None) -> float:
    """Seconds per fine-tuning batch, on a copy (the model itself is not touched)."""
    trial = copy.deepcopy(model).train()
    optimizer = make_optimizer(trial, config.finetune_lr, config.momentum, config.weight_decay)
    batches = iterate_batches(splits.train, splits.info, config.batch_size, True,
                              torch.Generator().manual_seed(0), config.augment)
    times = []
    for _, (x, y) in zip(range(TIMED_STEPS + 1), batches, strict=False):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        if teacher is not None:
            with torch.no_grad():
                teacher(x)
        nn.functional.cross_entropy(trial(x), y).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return min(times[1:]) if len(times) > 1 else times[0]  # the first pays for warm-up


@torch.no_grad()
def _timed_eval(model: nn.Module, splits: Splits) -> float:
    model.eval()
    x, _ = next(iter(iterate_batches(splits.val, splits.info, 512)))
    model(x)
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def estimate(model: nn.Module, splits: Splits, config: PruneConfig, step2_iterations: int,
             teacher: nn.Module | None = None, step1_done: int = 0) -> ScheduleEstimate:
    step_s = _timed_steps(model, splits, config, teacher)
    eval_s = _timed_eval(model, splits)
    per_epoch = math.ceil(len(splits.train) / config.batch_size)
    evals = math.ceil(len(splits.val) / 512) + math.ceil(len(splits.test) / 512)
    fixed = config.rank_batches * step_s + evals * eval_s
    step1 = (config.step1_finetune_epochs + config.step1_recovery_epochs / 2) * per_epoch * step_s + fixed
    step2 = config.step2_finetune_epochs * per_epoch * step_s + fixed
    return ScheduleEstimate(step_s, eval_s, step1, step2,
                            max(0, config.step1_max_iterations - step1_done), step2_iterations)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def describe(config: PruneConfig, splits: Splits, found: ScheduleEstimate, layers: dict[str, list[str]],
             step1_finished: bool) -> list[str]:
    """The lines printed before the run."""
    lines = [f"schedule: fine-tuning on {len(splits.train):,} images, judged on {len(splits.val):,} "
             f"validation images, reported on {len(splits.test):,} test images; "
             f"{found.step_s * 1000:.0f} ms per batch of {config.batch_size} here"
             + (f" (distilling from the base, weight {config.distill_weight:g})"
                if config.distill_weight else "")]
    if step1_finished:
        lines.append("  step 1: finished (resumed from the series store)")
    else:
        lines.append(
            f"  step 1: 1/{config.step1_divisor} of the filters an iteration (widths multiples of "
            f"{config.step1_round_to}), {config.step1_finetune_epochs:g} epochs of fine-tuning each"
            + (f" (+{config.step1_recovery_epochs:g} to recover one over budget)"
               if config.step1_recovery_epochs else "")
            + f"; stops at {config.step1_target_mac_reduction:g}x fewer MACs, a loss over "
            f"{100 * config.step1_budget:.2g} points on validation, or {config.step1_max_iterations} "
            f"iterations: ~{_duration(found.step1_iteration_s)} an iteration, at most "
            f"~{_duration(found.step1_s)} for the {found.step1_iterations} left (models shrink: less)")
    lines.append(
        f"  step 2: {found.step2_iterations} iterations over {', '.join(layers) or 'no layer'} "
        f"(splits {', '.join(s for splits_ in layers.values() for s in splits_)}), "
        f"{config.step2_finetune_epochs:g} epochs each: ~{_duration(found.step2_s)} at the base's width "
        f"(the step-1 model is thinner: less)")
    return lines
