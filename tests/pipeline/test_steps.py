import types

import pytest
import torch

from pipeline import steps
from pipeline.config import PruneConfig
from pipeline.data import load_splits
from pipeline.models import build, make_spec
from pipeline.split import total_macs
from pipeline.steps import Snapshot, run_step1, run_step2, step1_verdict, step2_ladder


def _scripted_step1(monkeypatch, accuracies, macs_factor=0.8):
    """Replace only the expensive iteration with one that returns a scripted accuracy, so the
    loop, the verdicts and the rollback are the real ones."""
    def fake_iteration(model, spec, splits, config, generator, per_iteration, iteration, teacher=None,
                       mac_limit=None, layer_model=None):
        return Snapshot(model, spec, iteration, accuracies[iteration - 1],
                        int(total_macs(spec) * macs_factor ** iteration))
    monkeypatch.setattr(steps, "step1_iteration", fake_iteration)


def test_step1_rolls_back_to_the_last_iteration_within_budget(monkeypatch):
    spec = make_spec("vgg11", 0.0625, in_channels=1)
    _scripted_step1(monkeypatch, [0.95, 0.94, 0.935, 0.92, 0.99])
    config = PruneConfig(step1_budget=0.01, step1_max_iterations=10)
    snaps = list(run_step1(build(spec), spec, None, config, baseline_val=0.945))
    assert [s.iteration for s in snaps] == [1, 2, 3, 4]  # stops at the first breach
    assert [s.accepted for s in snaps] == [True, True, True, False]
    assert "rolled back" in snaps[-1].stop_reason
    kept = [s for s in snaps if s.accepted][-1]
    assert kept.iteration == 3 and kept.val_accuracy == 0.935


def test_step1_stops_at_the_mac_target_and_keeps_that_iteration(monkeypatch):
    spec = make_spec("vgg11", 0.0625, in_channels=1)
    _scripted_step1(monkeypatch, [0.95] * 10, macs_factor=0.5)
    config = PruneConfig(step1_budget=0.01, step1_target_mac_reduction=6.0)
    snaps = list(run_step1(build(spec), spec, None, config, baseline_val=0.95))
    assert len(snaps) == 3 and snaps[-1].accepted  # 2^3 = 8x >= 6x
    assert "MAC reduction target" in snaps[-1].stop_reason


def test_step1_verdict_cases():
    spec = make_spec("vgg11", 0.0625, in_channels=1)
    config = PruneConfig(step1_budget=0.01, step1_max_iterations=5)
    snap = Snapshot(None, spec, 2, 0.9, 100)
    assert step1_verdict(snap, 0.905, 400, config) == (True, None)
    assert step1_verdict(snap, 0.911, 400, config)[0] is False
    assert step1_verdict(Snapshot(None, spec, 5, 0.9, 100), 0.9, 400, config)[1].startswith("reached")


def test_real_step1_and_step2_iterations_on_a_tiny_model(fashion_dir):
    torch.manual_seed(0)
    spec = make_spec("vgg11", 0.125, in_channels=1)
    model = build(spec)
    splits = load_splits("fashion-mnist", fashion_dir, 0.2)
    config = PruneConfig(rank_batches=1, batch_size=16, step1_finetune_epochs=0.2,
                         step2_finetune_epochs=0.2, step1_budget=1.0, step1_max_iterations=2,
                         step2_steps=3, step1_round_to=1)  # exact counts (rounded: test_round_to)
    snaps = list(run_step1(model, spec, splits, config, baseline_val=0.1))
    assert len(snaps) == 2 and all(s.accepted for s in snaps)
    per_iteration = -(-sum(spec.widths) // 16)
    assert sum(snaps[0].spec.widths) == sum(spec.widths) - per_iteration
    assert sum(snaps[1].spec.widths) == sum(spec.widths) - 2 * per_iteration
    assert snaps[1].macs < snaps[0].macs < total_macs(spec)

    s1 = snaps[-1]
    ladder = step2_ladder(s1.spec, "conv3_1", config)
    series = list(run_step2(s1.model, s1.spec, "conv3_1", splits, config))
    assert [s.iteration for s in series] == list(range(1, len(ladder) + 1))
    assert [s.spec.width_of()["conv3_1"] for s in series] == ladder
    for s in series:  # only the chosen layer shrinks
        others = {k: v for k, v in s.spec.width_of().items() if k != "conv3_1"}
        assert others == {k: v for k, v in s1.spec.width_of().items() if k != "conv3_1"}
    with pytest.raises(ValueError, match="not below"):
        steps.step2_iteration(s1.model, s1.spec, "conv3_1", 99, splits, config,
                              torch.Generator(), 1)


def test_resumed_step1_measures_against_the_base_model(monkeypatch):
    base = make_spec("vgg11", 0.125, in_channels=1)
    resumed = base.with_widths({"conv5_2": 1, "conv5_1": 1})
    seen = []

    def fake_iteration(model, spec, splits, config, generator, per_iteration, iteration, teacher=None,
                       mac_limit=None, layer_model=None):
        seen.append(per_iteration)
        return Snapshot(model, spec, iteration, 0.95, total_macs(base) // 7)

    monkeypatch.setattr(steps, "step1_iteration", fake_iteration)
    config = PruneConfig(step1_budget=0.01, step1_target_mac_reduction=6.0)
    snaps = list(run_step1(None, resumed, None, config, 0.95, start_iteration=3, base_spec=base))
    assert seen == [-(-sum(base.widths) // 16)] and snaps[0].iteration == 4
    assert "MAC reduction target (7.00x)" in snaps[0].stop_reason


def test_distillation_loss_is_cross_entropy_plus_a_kl_to_the_teacher():
    torch.manual_seed(0)
    teacher = torch.nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    student = torch.randn(8, 3, requires_grad=True)
    ce = torch.nn.functional.cross_entropy(student, y)
    assert steps.distillation_loss(teacher, 0.0, 4.0)(student, x, y).item() == pytest.approx(ce.item())
    with torch.no_grad():
        same = teacher(x)
    # A student that matches the teacher pays only the (1 - w) cross-entropy.
    mixed = steps.distillation_loss(teacher, 0.7, 2.0)(same, x, y)
    assert mixed.item() == pytest.approx(0.3 * torch.nn.functional.cross_entropy(same, y).item(), rel=1e-5)
    loss = steps.distillation_loss(teacher, 0.7, 2.0)(student, x, y)
    assert loss.item() > 0.3 * ce.item()
    loss.backward()
    assert student.grad is not None and teacher.weight.grad is None


def test_distilled_finetuning_needs_a_teacher_and_uses_it(fashion_dir):
    torch.manual_seed(0)
    spec = make_spec("vgg11", 0.125, in_channels=1)
    model, teacher = build(spec), build(spec)
    splits = load_splits("fashion-mnist", fashion_dir, 0.2)
    config = PruneConfig(batch_size=16, distill_weight=0.5)
    with pytest.raises(ValueError, match="teacher"):
        steps.finetune(model, splits, config, 0.1, torch.Generator())
    start = {k: v.clone() for k, v in model.state_dict().items()}
    before = [p.detach().clone() for p in teacher.parameters()]
    steps.finetune(model, splits, config, 0.1, torch.Generator().manual_seed(1), teacher)
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters(), strict=True))
    distilled = [p.detach().clone() for p in model.parameters()]
    model.load_state_dict(start)
    steps.finetune(model, splits, PruneConfig(batch_size=16), 0.1, torch.Generator().manual_seed(1))
    # Same data order and start: only the loss differs, so the teacher changed the result.
    assert any(not torch.equal(a, b) for a, b in zip(distilled, model.parameters(), strict=True))
    with pytest.raises(ValueError, match="distill_weight"):
        PruneConfig(distill_weight=1.5)


def test_an_iteration_under_budget_gets_a_recovery_finetune_before_rolling_back(monkeypatch):
    spec = make_spec("vgg11", 0.0625, in_channels=1)
    _scripted_step1(monkeypatch, [0.945, 0.90, 0.90])
    recovered = iter([0.942, 0.92])  # what validation says after each recovery fine-tune
    tuned = []
    monkeypatch.setattr(steps, "finetune", lambda model, splits, config, epochs, *a: tuned.append(epochs))
    monkeypatch.setattr(steps, "evaluate", lambda *a: next(recovered))
    config = PruneConfig(step1_budget=0.01, step1_max_iterations=10, step1_recovery_epochs=3.0)
    splits = types.SimpleNamespace(val=None, info=None)
    snaps = list(run_step1(build(spec), spec, splits, config, baseline_val=0.95))
    assert [s.accepted for s in snaps] == [True, True, False]
    assert snaps[1].recovered_from == 0.90 and snaps[1].val_accuracy == 0.942
    assert snaps[2].val_accuracy == 0.92 and "rolled back" in snaps[2].stop_reason
    assert tuned == [3.0, 3.0] and snaps[0].recovered_from is None
    # Without recovery epochs the second iteration already stops the procedure.
    _scripted_step1(monkeypatch, [0.945, 0.90, 0.90])
    plain = list(run_step1(build(spec), spec, None, PruneConfig(step1_budget=0.01), baseline_val=0.95))
    assert [s.accepted for s in plain] == [True, False]


def test_the_iteration_that_reaches_the_mac_target_removes_only_enough_filters():
    from pipeline.steps import removals_within
    from pipeline.taylor import lowest_filters

    spec = make_spec("vgg11", 0.125, in_channels=1)
    generator = torch.Generator().manual_seed(0)
    scores = {name: torch.rand(width, generator=generator) for name, width in spec.width_of().items()}

    def macs_without(removals):
        return total_macs(spec.with_widths(
            {n: w - len(removals.get(n, ())) for n, w in spec.width_of().items()}))

    full = lowest_filters(scores, 40, 1)
    limit = (total_macs(spec) + macs_without(full)) // 2  # halfway: reached well before 40 filters
    clipped = removals_within(scores, spec, 40, 1, mac_limit=limit)
    count = sum(len(v) for v in clipped.values())
    assert 1 <= count < 40
    assert macs_without(clipped) <= limit < macs_without(lowest_filters(scores, count - 1, 1))
    for name, indices in clipped.items():  # a prefix of the same global ranking
        assert set(indices) <= set(full.get(name, []))
    # a limit out of reach of one iteration, or no limit, removes the whole iteration's worth
    assert removals_within(scores, spec, 40, 1, mac_limit=1) == full
    assert removals_within(scores, spec, 40, 1) == full


@pytest.mark.parametrize("target", [0.5, 1.0])
def test_a_mac_target_that_is_already_met_is_refused(target):
    with pytest.raises(ValueError, match="step1_target_mac_reduction"):
        PruneConfig(step1_target_mac_reduction=target)
    assert PruneConfig(step1_target_mac_reduction=0).step1_target_mac_reduction == 0
