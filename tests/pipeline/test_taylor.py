import pytest
import torch

from pipeline.data import load_splits
from pipeline.models import build, make_spec
from pipeline.schedule import step1_filters_per_iteration, step2_widths
from pipeline.taylor import (
    _taylor_hooks,
    lowest_filters,
    normalize_per_layer,
    rank_filters,
    taylor_scores,
)


@pytest.fixture
def tiny(fashion_dir):
    torch.manual_seed(0)
    spec = make_spec("vgg11", 0.0625, in_channels=1)
    return build(spec), spec, load_splits("fashion-mnist", fashion_dir, 0.2)


def test_taylor_scores_have_one_value_per_filter_and_unit_norm(tiny):
    model, spec, splits = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = rank_filters(model, splits.train, splits.info, torch.Generator().manual_seed(0),
                          num_batches=2, batch_size=8)
    assert list(scores) == spec.group_names
    for name, s in scores.items():
        assert s.shape == (spec.width_of()[name],)
        assert (s >= 0).all()
        assert torch.linalg.vector_norm(s).item() == pytest.approx(1.0, abs=1e-5)
    # ranking changes nothing (weights nor BN statistics), and leaves no hooks or gradients
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())
    assert not any(block._forward_hooks for block in model.stages.values())


def test_taylor_term_is_activation_times_gradient(tiny):
    model, _, _ = tiny
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    model.train()
    captured = {}
    handle = model.stages["conv2_1"].register_forward_hook(lambda m, i, o: captured.update(a=o))
    out = model(x)
    handle.remove()
    grad = torch.autograd.grad(torch.nn.functional.cross_entropy(out, y), captured["a"])[0]
    expected = (captured["a"] * grad).sum(dim=(2, 3)).mean(dim=0).detach()

    sums = {}
    with _taylor_hooks(model, ["conv2_1"], sums):
        torch.nn.functional.cross_entropy(model(x), y).backward()
    assert torch.allclose(sums["conv2_1"], expected, atol=1e-6)


def test_l1_criterion_and_unknown_criterion(tiny):
    model, spec, splits = tiny
    g = torch.Generator().manual_seed(0)
    scores = rank_filters(model, splits.train, splits.info, g, criterion="l1")
    w = model.stages["conv1_1"].conv.weight.abs().sum(dim=(1, 2, 3))
    assert torch.allclose(scores["conv1_1"], w / torch.linalg.vector_norm(w))
    with pytest.raises(ValueError, match="unknown criterion 'random'"):
        rank_filters(model, splits.train, splits.info, g, criterion="random")
    assert taylor_scores(model, splits.train, splits.info, g, 1, 8, ["conv1_1"]).keys() == {"conv1_1"}


def test_lowest_filters_is_global_and_respects_min_width():
    scores = normalize_per_layer({"a": torch.tensor([0.1, 0.9, 0.2]), "b": torch.tensor([5.0, 0.01])})
    assert lowest_filters(scores, 2) == {"b": [1], "a": [0]}
    chosen = lowest_filters(scores, 10, min_width=1)
    assert len(chosen["a"]) == 2 and len(chosen["b"]) == 1
    assert lowest_filters(scores, 0) == {}


def test_schedules():
    assert step1_filters_per_iteration(4224) == 264  # the paper's VGG-16: ceil(4224 / 16)
    assert step1_filters_per_iteration(1056, 16) == 66
    assert step2_widths(64, 6) == [32, 16, 8, 4, 2, 1]
    ladder = step2_widths(128, 16)
    assert ladder[-1] == 1 and all(a > b for a, b in zip(ladder, ladder[1:], strict=False))
    assert step2_widths(1, 16) == []
    with pytest.raises(ValueError, match="divisor"):
        step1_filters_per_iteration(10, 0)


def test_mac_penalty_prefers_expensive_filters_at_equal_importance():
    from pipeline.taylor import penalize_cost

    scores = {"early": torch.tensor([0.5, 0.5]), "late": torch.tensor([0.5, 0.5])}
    macs = {"early": 1000, "late": 10}
    assert penalize_cost(scores, macs, 0.0) is scores
    adjusted = penalize_cost(scores, macs, 0.1)
    assert torch.allclose(adjusted["early"], torch.tensor([0.4, 0.4]))
    assert lowest_filters(adjusted, 1) == {"early": [0]}
    with pytest.raises(ValueError, match="MAC weight"):
        penalize_cost(scores, macs, -1)
