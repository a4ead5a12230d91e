"""The two pruning procedures, one iteration per call, plus in-process drivers.

Step 1 prunes the whole network for computation: rank every filter, remove the globally lowest,
fine-tune, evaluate; stop at an accuracy budget (rolling back to the last iteration within it) or
at a target MAC reduction. Step 2 prunes one layer (the one before a split point) down a width
ladder, fine-tuning after each cut; every iteration is kept.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pipeline.config import PruneConfig
from pipeline.data import Splits
from pipeline.device import resolve_device
from pipeline.layer_times import LayerModel
from pipeline.models.registry import ArchSpec
from pipeline.models.staged import StagedNet
from pipeline.schedule import step1_filters_per_iteration, step2_widths
from pipeline.split import macs_per_filter, total_macs, weights_per_filter
from pipeline.surgery import remove_filters
from pipeline.taylor import lowest_filters, penalize_cost, rank_filters
from pipeline.train import evaluate, make_optimizer, train_one_epoch


@dataclass
class Snapshot:
    """A model at one iteration of a procedure, with what was measured on it."""

    model: StagedNet
    spec: ArchSpec
    iteration: int
    val_accuracy: float
    macs: int
    removed: dict[str, int] = field(default_factory=dict)
    accepted: bool = True
    stop_reason: str | None = None
    recovered_from: float | None = None  # validation accuracy before a recovery fine-tune


def derive_seed(seed: int, *names: str) -> int:
    """A seed for one procedure (e.g. step 2 of one layer) independent of execution order."""
    digest = hashlib.sha256(":".join([str(seed), *names]).encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**63)


def distillation_loss(
    teacher: StagedNet, weight: float, temperature: float,
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """(student logits, images, labels) -> (1 - w) CE + w T^2 KL(teacher || student) at T.

    Hinton et al.'s knowledge distillation; the teacher (the unpruned model) sees the same
    augmented batch, in eval mode, without gradients.
    """
    def loss(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            soft = F.softmax(teacher(x) / temperature, dim=1)
        kl = F.kl_div(F.log_softmax(logits / temperature, dim=1), soft, reduction="batchmean")
        return (1 - weight) * F.cross_entropy(logits, y) + weight * temperature**2 * kl

    return loss


def finetune(
    model: StagedNet, splits: Splits, config: PruneConfig, epochs: float, generator: torch.Generator,
    teacher: StagedNet | None = None,
) -> None:
    """SGD (momentum, weight decay), cosine-decayed LR, for a possibly fractional number of epochs;
    distilling from `teacher` when `config.distill_weight` > 0."""
    if epochs <= 0:
        return
    loss_fn = None
    if config.distill_weight > 0:
        if teacher is None:
            raise ValueError("distill_weight > 0 needs the unpruned model as the teacher")
        teacher.eval()
        loss_fn = distillation_loss(teacher, config.distill_weight, config.distill_temperature)
    optimizer = make_optimizer(model, config.finetune_lr, config.momentum, config.weight_decay)
    batches_per_epoch = math.ceil(len(splits.train) / config.batch_size)
    total = max(1, round(epochs * batches_per_epoch))
    # Cosine decay to zero: the pruned model settles into a minimum instead of being knocked
    # out of it by a constant step size at the end of fine-tuning.
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    remaining = total
    while remaining > 0:
        batches = min(remaining, batches_per_epoch)
        train_one_epoch(model, splits.train, splits.info, optimizer, generator, config.batch_size,
                        config.augment, step_hook=scheduler.step, max_batches=batches,
                        loss_fn=loss_fn)
        remaining -= batches


# ---- step 1 -------------------------------------------------------------------------------

def removals_within(
    scores: dict[str, torch.Tensor], spec: ArchSpec, count: int, min_width: int,
    mac_limit: int | None = None, round_to: int = 1,
) -> dict[str, list[int]]:
    """The `count` lowest-scored filters, or, when fewer of them already bring the model down to
    `mac_limit` MACs, the fewest that do: the iteration that reaches a MAC target stops there
    instead of overshooting it by a whole iteration's worth of filters. With `round_to` > 1 the
    filters leave in aligned blocks (`pipeline.taylor.lowest_blocks`), so the clipped iteration
    too leaves every group it cuts at a multiple of `round_to`."""
    widths = spec.width_of()

    def macs_without(removals: dict[str, list[int]]) -> int:
        return total_macs(spec.with_widths({n: w - len(removals.get(n, ())) for n, w in widths.items()}))

    def macs_after(k: int) -> int:
        return macs_without(lowest_filters(scores, k, min_width, round_to))

    whole = lowest_filters(scores, count, min_width, round_to)
    if mac_limit is None or count <= 1 or macs_without(whole) > mac_limit:
        return whole
    low, high = 1, count  # removing more filters never adds MACs: bisect for the fewest
    while low < high:
        middle = (low + high) // 2
        if macs_after(middle) <= mac_limit:
            high = middle
        else:
            low = middle + 1
    return lowest_filters(scores, low, min_width, round_to)


def step1_mac_limit(base_macs: int, config: PruneConfig) -> int | None:
    """The MAC count at which step 1 reaches its target reduction (None without a target)."""
    if not config.step1_target_mac_reduction:
        return None
    return int(base_macs / config.step1_target_mac_reduction)


def filter_costs(spec: ArchSpec, config: PruneConfig,
                 layer_model: LayerModel | None = None) -> dict[str, float]:
    """What removing one filter of each group saves, as `config.step1_cost` counts it: MACs, or
    microseconds of the device's call by `layer_model` (per MAC and per weight)."""
    macs = macs_per_filter(spec)
    if config.step1_cost == "macs":
        return {group: float(m) for group, m in macs.items()}
    if layer_model is None:
        raise ValueError("step1_cost 'latency' needs the base's layer model (`prepare` fits it)")
    weights = weights_per_filter(spec)
    return {group: layer_model.work_us(macs[group], weights[group]) for group in macs}


def step1_iteration(
    model: StagedNet, spec: ArchSpec, splits: Splits, config: PruneConfig, generator: torch.Generator,
    filters_per_iteration: int, iteration: int, teacher: StagedNet | None = None,
    mac_limit: int | None = None, layer_model: LayerModel | None = None,
) -> Snapshot:
    """Rank all filters, remove the globally lowest (stopping at `mac_limit`, see
    `removals_within`; in blocks of `config.step1_round_to`), fine-tune, evaluate on validation.
    `layer_model` prices a filter in time where `config.step1_cost` is "latency"."""
    model = model.to(resolve_device(config.device))
    scores = rank_filters(model, splits.train, splits.info, generator, config.criterion,
                          config.rank_batches, config.batch_size)
    if config.mac_weight > 0:
        scores = penalize_cost(scores, filter_costs(spec, config, layer_model), config.mac_weight)
    removals = removals_within(scores, spec, filters_per_iteration, config.min_width, mac_limit,
                               config.step1_round_to)
    if not removals:
        return Snapshot(model, spec, iteration, float("nan"), total_macs(spec), accepted=False,
                        stop_reason="every layer is at its minimum width")
    new_model, new_spec = remove_filters(model, spec, removals)
    finetune(new_model, splits, config, config.step1_finetune_epochs, generator, teacher)
    accuracy = evaluate(new_model, splits.val, splits.info)
    return Snapshot(new_model, new_spec, iteration, accuracy, total_macs(new_spec),
                    {k: len(v) for k, v in removals.items()})


def step1_verdict(
    snapshot: Snapshot, baseline_val: float, base_macs: int, config: PruneConfig
) -> tuple[bool, str | None]:
    """(accept this iteration, reason to stop or None) for a step-1 iteration.

    An iteration below `baseline - budget` is rejected and stops the procedure (rollback to the
    previous one); an accepted iteration stops it when it reaches the MAC target or the last
    allowed iteration.
    """
    if snapshot.stop_reason is not None:
        return False, snapshot.stop_reason
    if snapshot.val_accuracy < baseline_val - config.step1_budget:
        return False, (f"validation accuracy {snapshot.val_accuracy:.4f} fell below the budget "
                       f"{baseline_val - config.step1_budget:.4f}: rolled back")
    reduction = base_macs / snapshot.macs
    if config.step1_target_mac_reduction and reduction >= config.step1_target_mac_reduction:
        return True, f"reached the MAC reduction target ({reduction:.2f}x)"
    if snapshot.iteration >= config.step1_max_iterations:
        return True, f"reached step1_max_iterations ({config.step1_max_iterations})"
    return True, None


def judge_step1(
    snapshot: Snapshot, baseline_val: float, base_macs: int, splits: Splits, config: PruneConfig,
    generator: torch.Generator, teacher: StagedNet | None = None,
) -> Snapshot:
    """Set `accepted` and `stop_reason` of a step-1 iteration (see `step1_verdict`).

    With `config.step1_recovery_epochs`, an iteration under the budget first gets that much more
    fine-tuning and is judged again: the procedure rolls back only when even a longer
    fine-tune cannot bring it within the budget.
    """
    snapshot.accepted, snapshot.stop_reason = step1_verdict(snapshot, baseline_val, base_macs, config)
    under_budget = (not snapshot.accepted and math.isfinite(snapshot.val_accuracy)
                    and snapshot.model is not None)
    if under_budget and config.step1_recovery_epochs > 0:
        before = snapshot.val_accuracy
        finetune(snapshot.model, splits, config, config.step1_recovery_epochs, generator, teacher)
        snapshot.val_accuracy = evaluate(snapshot.model, splits.val, splits.info)
        snapshot.recovered_from, snapshot.stop_reason = before, None
        snapshot.accepted, snapshot.stop_reason = step1_verdict(snapshot, baseline_val, base_macs, config)
    return snapshot


def run_step1(
    model: StagedNet, spec: ArchSpec, splits: Splits, config: PruneConfig, baseline_val: float,
    start_iteration: int = 0, base_spec: ArchSpec | None = None, teacher: StagedNet | None = None,
    layer_model: LayerModel | None = None,
) -> Iterator[Snapshot]:
    """Yield every step-1 iteration (accepted or not) until the procedure stops.

    The model to keep is the last snapshot with `accepted=True` (or the input model if none).
    When resuming, `base_spec` is the unpruned model's: the MAC target and the filters per
    iteration are measured against it, not against the resumed model.
    """
    base_spec = base_spec or spec
    base_macs = total_macs(base_spec)
    per_iteration = step1_filters_per_iteration(sum(base_spec.widths), config.step1_divisor)
    iteration = start_iteration
    while iteration < config.step1_max_iterations:
        iteration += 1
        generator = torch.Generator().manual_seed(derive_seed(config.seed, "step1", str(iteration)))
        snapshot = step1_iteration(model, spec, splits, config, generator, per_iteration, iteration,
                                   teacher, step1_mac_limit(base_macs, config), layer_model=layer_model)
        judge_step1(snapshot, baseline_val, base_macs, splits, config, generator, teacher)
        yield snapshot
        if not snapshot.accepted or snapshot.stop_reason:
            return
        model, spec = snapshot.model, snapshot.spec


# ---- step 2 -------------------------------------------------------------------------------

def step2_iteration(
    model: StagedNet, spec: ArchSpec, layer: str, target_width: int, splits: Splits,
    config: PruneConfig, generator: torch.Generator, iteration: int, teacher: StagedNet | None = None,
) -> Snapshot:
    """Prune only `layer` down to `target_width` filters (lowest ranked), fine-tune, evaluate."""
    model = model.to(resolve_device(config.device))
    width = spec.width_of()[layer]
    if not 1 <= target_width < width:
        raise ValueError(f"{layer} has {width} filters; target width {target_width} is not below")
    scores = rank_filters(model, splits.train, splits.info, generator, config.criterion,
                          config.rank_batches, config.batch_size, layers=[layer])
    removals = lowest_filters(scores, width - target_width, min_width=target_width)
    new_model, new_spec = remove_filters(model, spec, removals)
    finetune(new_model, splits, config, config.step2_finetune_epochs, generator, teacher)
    accuracy = evaluate(new_model, splits.val, splits.info)
    return Snapshot(new_model, new_spec, iteration, accuracy, total_macs(new_spec),
                    {layer: width - target_width})


def step2_ladder(spec: ArchSpec, layer: str, config: PruneConfig) -> list[int]:
    """The widths step 2 visits for `layer`, from the step-1 width downwards (multiples of
    `config.step2_round_to` down to it, see `step2_widths`)."""
    return step2_widths(spec.width_of()[layer], config.step2_steps, config.min_width,
                        config.step2_round_to)


def run_step2(
    model: StagedNet, spec: ArchSpec, layer: str, splits: Splits, config: PruneConfig,
    ladder: list[int] | None = None, done: int = 0, teacher: StagedNet | None = None,
) -> Iterator[Snapshot]:
    """Yield one snapshot per width of the ladder; each is a variant of the series.

    Args:
        model, spec: the step-1 model, or iteration `done`'s model when resuming.
        ladder: the widths to visit (default: `step2_ladder` of the step-1 spec).
        done: iterations already finished (resume after them).
    """
    if ladder is None:
        if done:
            raise ValueError("resuming step 2 needs the original ladder")
        ladder = step2_ladder(spec, layer, config)
    for iteration in range(done + 1, len(ladder) + 1):
        generator = torch.Generator().manual_seed(
            derive_seed(config.seed, "step2", layer, str(iteration)))
        snapshot = step2_iteration(model, spec, layer, ladder[iteration - 1], splits, config,
                                   generator, iteration, teacher)
        yield snapshot
        model, spec = snapshot.model, snapshot.spec
