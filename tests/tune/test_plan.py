"""Planning a Tune run from the store: resources, search grid, what is finished, what resumes."""

from types import SimpleNamespace as Kept  # the fields of a Variant these functions read

import pytest

from pipeline.config import PruneConfig
from pipeline.models.registry import build
from pipeline.series import SeriesError
from pipeline.steps import step2_ladder
from tune.plan import (
    Step1Search,
    TrialResources,
    choose_step1,
    config_dict,
    step1_entries,
    step1_finished,
    step1_job,
    step2_done,
    step2_jobs,
    variant_order,
)


def test_trial_resources_map_to_ray_and_threads():
    assert TrialResources().to_ray() == {"cpu": 1.0, "gpu": 0.0}
    r = TrialResources(cpus=2.5, gpus=0.25, custom={"prune": 1})
    assert r.to_ray() == {"cpu": 2.5, "gpu": 0.25, "prune": 1}
    assert r.threads == 2
    assert TrialResources(cpus=0.5).threads == 1
    assert TrialResources(cpus=0, gpus=2).threads == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"cpus": -1}, "cpus per trial"),
    ({"gpus": 1.5}, "whole number"),
    ({"cpus": 0}, "must reserve"),
    ({"custom": {"GPU": 1}}, "bad custom resource"),
    ({"custom": {"edge": -1}}, "bad custom resource"),
])
def test_trial_resources_reject_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrialResources(**kwargs)


def test_search_grid_and_its_validation():
    config = PruneConfig(step1_divisor=16, step1_budget=0.01)
    grid = Step1Search(divisors=(8, 32), budgets=(0.01, 0.02)).candidates(config)
    assert grid == {
        "step1-d8-b0.01": {"step1_divisor": 8, "step1_budget": 0.01},
        "step1-d8-b0.02": {"step1_divisor": 8, "step1_budget": 0.02},
        "step1-d32-b0.01": {"step1_divisor": 32, "step1_budget": 0.01},
        "step1-d32-b0.02": {"step1_divisor": 32, "step1_budget": 0.02},
    }
    assert list(Step1Search(budgets=(0.05,)).candidates(config)) == ["step1-d16-b0.05"]
    with pytest.raises(ValueError, match="unknown search metric"):
        Step1Search(divisors=(8,), metric="speed")
    with pytest.raises(ValueError, match="needs divisors"):
        Step1Search()
    with pytest.raises(ValueError, match="step1_divisor"):
        Step1Search(divisors=(0,)).candidates(config)


def test_a_search_cannot_go_on_from_another_series(tmp_path):
    from tune.launch import launch_pruning  # refused before Ray starts

    config = PruneConfig(out=str(tmp_path / "s"), step1_continue_from=str(tmp_path / "src"))
    with pytest.raises(ValueError, match="starts every candidate from the base"):
        launch_pruning(config, search=Step1Search(divisors=(8,)), log=lambda m: None)
    assert not (tmp_path / "s").exists()


def test_choose_step1_by_the_stated_metric():
    kept = {
        "a": Kept(val_accuracy=0.90, macs=100),
        "b": Kept(val_accuracy=0.89, macs=60),   # within a 0.02 budget of 0.905
        "c": Kept(val_accuracy=0.80, macs=30),   # outside it
        "d": Kept(val_accuracy=0.89, macs=60),   # tie on MACs, same accuracy: first wins
    }
    config = PruneConfig(step1_budget=0.02)
    assert choose_step1(kept, 0.905, config, "macs") == "b"
    assert choose_step1(kept, 0.905, config, "val_accuracy") == "a"
    # nothing within the budget: the most accurate
    assert choose_step1({"c": kept["c"], "b": kept["b"]}, 0.99, config, "macs") == "b"
    with pytest.raises(ValueError):
        choose_step1({}, 0.9, config, "macs")


def test_step1_finished_reads_the_recorded_iterations(spec):
    base = Kept(macs=1000, val_accuracy=0.9)
    entry = lambda i, macs: Kept(iteration=i, macs=macs)  # noqa: E731
    assert not step1_finished([], base, PruneConfig(step1_max_iterations=3))
    assert step1_finished([], base, PruneConfig(step1_max_iterations=0))
    assert not step1_finished([entry(1, 800), entry(2, 600)], base,
                              PruneConfig(step1_max_iterations=3))
    assert step1_finished([entry(1, 800), entry(2, 600), entry(3, 500)], base,
                          PruneConfig(step1_max_iterations=3))
    assert step1_finished([entry(1, 400)], base,
                          PruneConfig(step1_max_iterations=9, step1_target_mac_reduction=2.0))


def test_step1_job_continues_after_the_last_recorded_iteration(store, spec, make_entry):
    base = store.manifest.base_variant
    job = step1_job("step1", store, base, step1_entries(store), threads=1)
    assert job["start"] == {"variant": "vgg11-base", "sha256": base.sha256, "iteration": 0}
    assert job["baseline_val"] == 0.9 and job["base_spec"] == spec.to_dict()
    smaller = spec.with_widths({"conv1_1": 3})
    for i in (1, 2, 4):  # i4 follows a hole: only i1, i2 count
        store.add_variant(build(smaller), smaller, make_entry(smaller, 1, i))
    entries = step1_entries(store)
    assert [e.iteration for e in entries] == [1, 2]
    job = step1_job("step1-d8-b0.1", store, base, entries, threads=2, overrides={"step1_divisor": 8})
    assert job["start"]["variant"] == "vgg11-s1-i2" and job["start"]["iteration"] == 2
    assert job["overrides"] == {"step1_divisor": 8} and job["threads"] == 2
    assert job["layer_model"] is None
    # a search candidate's store has no layer model: the launch hands it the series' own
    fitted = {"us_per_mmac": 12.0, "us_per_kweight": 0.13, "us_per_layer": 9.0}
    job = step1_job("step1-d8-b0.1", store, base, entries, threads=2, layer_model=fitted)
    assert job["layer_model"] == fitted


def test_step2_jobs_skip_complete_ladders_and_resume_partial_ones(store, spec, make_entry):
    config = PruneConfig(step2_steps=2)
    step1 = store.manifest.base_variant  # step 2 may start from the base model
    layers = {"conv1_1": ["conv1_1", "pool1"], "conv2_1": ["conv2_1", "pool2"],
              "conv3_2": ["conv3_2", "pool3"]}
    for layer, iterations in (("conv1_1", (1, 2)), ("conv2_1", (1,))):
        ladder = step2_ladder(spec, layer, config)
        for i in iterations:
            narrow = spec.with_widths({layer: ladder[i - 1]})
            store.add_variant(build(narrow), narrow, make_entry(narrow, 2, i, layer, ladder=ladder))
    assert step2_done(store, "conv1_1") == 2 and step2_done(store, "conv3_2") == 0
    jobs = step2_jobs(store, step1, layers, config, threads=1)
    assert [j["key"] for j in jobs] == ["step2-conv2_1", "step2-conv3_2"]
    partial, fresh = jobs
    assert partial["start"]["variant"] == "vgg11-s2-conv2_1-i1" and partial["start"]["iteration"] == 1
    assert fresh["start"]["variant"] == "vgg11-base" and fresh["start"]["iteration"] == 0
    assert fresh["offered"] == ["conv3_2", "pool3"]
    assert fresh["ladder"] == step2_ladder(spec, "conv3_2", config)
    with pytest.raises(SeriesError, match="ladder"):
        step2_jobs(store, step1, layers, PruneConfig(step2_steps=3), threads=1)


def test_variant_order_is_the_in_process_order(spec):
    entries = [Kept(step=step, layer=layer, iteration=iteration) for step, layer, iteration in (
        (2, "conv3_2", 1), (1, None, 2), (2, "conv1_1", 2), (0, None, 0), (2, "conv1_1", 1), (1, None, 1))]
    ordered = sorted(entries, key=variant_order(spec))
    assert [(e.step, e.layer, e.iteration) for e in ordered] == [
        (0, None, 0), (1, None, 1), (1, None, 2), (2, "conv1_1", 1), (2, "conv1_1", 2),
        (2, "conv3_2", 1)]


def test_config_dict_round_trips_through_the_tune_boundary():
    config = PruneConfig(step2_splits=("conv1_1", "pool2"))
    d = config_dict(config)
    assert d["step2_splits"] == ["conv1_1", "pool2"]
    assert PruneConfig(**d) == config


def test_round_to_crosses_the_tune_boundary_and_rounds_the_step2_jobs_ladders(store, spec):
    from pipeline.config import build_config

    config = PruneConfig(step1_round_to=4, step2_round_to=8, step2_steps=3)
    trial = build_config(PruneConfig, {**config_dict(config), **{}})  # what a trial rebuilds
    assert (trial.step1_round_to, trial.step2_round_to) == (4, 8)
    wide = spec.with_widths({"conv5_2": 30})
    step1 = store.add_variant(build(wide), wide, {**store.manifest.base_variant.to_json(),
                                                  "id": "vgg11-s1-i1", "step": 1, "iteration": 1})
    (job,) = step2_jobs(store, step1, {"conv5_2": ["conv5_2", "pool5"]}, config, threads=1)
    assert job["ladder"] == step2_ladder(wide, "conv5_2", config) == [8, 3, 1]  # 10 -> 8; 3 below 8
