import pytest

from pipeline import prune_job
from pipeline.config import PruneConfig
from pipeline.layer_times import LayerModel
from pipeline.report import format_series_table, series_rows
from pipeline.series import SeriesError, SeriesStore
from pipeline.split import split_points
from pipeline.steps import step2_ladder


def _config(base, data_dir, out, **kw):
    settings = dict(base=str(base), data_dir=str(data_dir), out=str(out), rank_batches=1,
                    batch_size=32, step1_finetune_epochs=0.1, step2_finetune_epochs=0.1,
                    step1_budget=1.0, step1_max_iterations=2, step2_steps=2, bytes_images=8,
                    augment=False, step2_splits=("conv1_1", "pool2", "conv2_1", "pool5"))
    settings.update(kw)
    return PruneConfig(**settings)


def test_series_resumes_after_an_interruption_without_redoing_work(
        base_checkpoint, learnable_fashion_dir, tmp_path, monkeypatch):
    config = _config(base_checkpoint, learnable_fashion_dir, tmp_path / "series")
    real = prune_job.describe_variant
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # base, two step-1 iterations, two step-2 variants, then a crash
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(prune_job, "describe_variant", interrupted)
    first = []
    with pytest.raises(KeyboardInterrupt):
        prune_job.prune_series(config, progress=False, log=first.append)
    monkeypatch.undo()
    step1_line = first[[line.startswith("schedule:") for line in first].index(True) + 1]
    assert step1_line.startswith("  step 1: 1/16 of the filters") and "for the 2 left" in step1_line
    partial = SeriesStore.open(config.out)
    assert len(partial.variants) == 5
    hashes = {v.id: v.sha256 for v in partial.variants}

    said = []
    store = prune_job.prune_series(config, progress=False, log=said.append)
    # the schedule comes first, with a time for what is left (step 1 was finished)
    assert said[0].startswith("schedule:") and "ms per batch of 32" in said[0]
    assert said[1] == "  step 1: finished (resumed from the series store)"
    step1 = store.manifest.step1_variant
    layers = prune_job.step2_layers(step1_spec := store.load_model(step1.id)[1], config)
    assert set(layers) == {"conv1_1", "conv2_1", "conv5_2"}  # pool2 shares conv2_1's series
    assert layers["conv2_1"] == ["conv2_1", "pool2"]
    expected = sum(len(step2_ladder(step1_spec, layer, config)) for layer in layers)
    step2 = store.manifest.step(2)
    assert len(step2) == expected  # one variant per iteration per layer, none repeated
    assert said[2].startswith(f"  step 2: {expected - 2} iterations over ")  # 2 were done
    for v in step2:
        assert sorted(v.splits) == sorted(layers[v.layer])
    for vid, sha in hashes.items():  # finished variants were not recomputed
        assert store.get(vid).sha256 == sha
    base = store.manifest.base_variant
    assert list(base.splits) == split_points(step1_spec)
    for v in store.variants:
        store.load_model(v.id)
        for m in v.splits.values():
            assert m.bytes_mean >= 35 and m.bytes_p95 >= m.bytes_mean * 0.5


def test_table_and_a_changed_config_is_refused(base_checkpoint, learnable_fashion_dir, tmp_path):
    config = _config(base_checkpoint, learnable_fashion_dir, tmp_path / "s", step1_max_iterations=1)
    store = prune_job.prune_series(config, progress=False, log=lambda m: None)
    rows = {r["split"]: r for r in series_rows(store.manifest, max_loss=1.0)}
    assert rows["pool2"]["s2_elements"] < rows["pool2"]["orig_elements"]
    assert rows["pool2"]["byte_reduction_vs_float32"] > 1
    assert "s2_id" not in rows["conv3_1"]  # no step-2 series was asked for there
    text = format_series_table(store.manifest)
    assert "pool2" in text and "step 1" in text
    with pytest.raises(SeriesError, match="other settings"):
        prune_job.prune_series(_config(base_checkpoint, learnable_fashion_dir, tmp_path / "s",
                                       step1_max_iterations=3), progress=False, log=None)
    # A series made before a config key existed resumes with that key at its default.
    older = {k: v for k, v in store.manifest.config.items() if not k.startswith("distill")}
    store.set_field("config", older)
    again = prune_job.prune_series(config, progress=False, log=lambda m: None)
    assert again.ids() == store.ids()
    # ... and under another thread count: where it runs is not what it computes
    faster = config.model_copy(update={"threads": config.threads + 1})
    assert prune_job.prune_series(faster, progress=False, log=lambda m: None).ids() == store.ids()


def test_a_base_trained_on_the_validation_images_is_detected(tmp_path):
    from pipeline.config import DEFAULT_FASHION_MNIST_DIR, PruneConfig
    from pipeline.prune_job import validation_leak

    config = PruneConfig(val_fraction=0.1, seed=0)
    trained = {"dataset": "fashion-mnist", "data_dir": DEFAULT_FASHION_MNIST_DIR, "seed": 0}
    assert "whole training set" in validation_leak({**trained, "val_fraction": 0.0}, config)
    assert "seed 3" in validation_leak({**trained, "val_fraction": 0.1, "seed": 3}, config)
    assert "val_fraction 0.2" in validation_leak({**trained, "val_fraction": 0.2}, config)
    assert validation_leak({**trained, "val_fraction": 0.1}, config) is None
    assert validation_leak({**trained, "val_fraction": 0.0, "dataset": "cifar10"}, config) is None
    assert validation_leak(None, config) is None


def test_latency_cost_fits_the_base_once_and_prices_filters_by_it(
        base_checkpoint, learnable_fashion_dir, tmp_path, monkeypatch):
    config = _config(base_checkpoint, learnable_fashion_dir, tmp_path / "s", step1_cost="latency",
                     mac_weight=0.5, step1_max_iterations=1, step2_splits=())
    said = []
    store = prune_job.prune_series(config, progress=False, log=said.append)
    model = store.manifest.step1_layer_model
    assert model["us_per_mmac"] > 0 and model["fitted_on"] == [store.manifest.base]
    assert model["base_run_us"] > 0 and model["runtime"] == "onnxruntime"
    assert any(line.startswith("step 1 prices a filter by its time on ONNX Runtime") for line in said)
    assert store.manifest.step1_variant.iteration == 1
    # resumed (step 1 reopened): the recorded model prices the filters, none is measured again
    monkeypatch.setattr(prune_job, "profile_layers", lambda *a, **k: pytest.fail("measured again"))
    priced = []
    real_run_step1 = prune_job.run_step1

    def spy(*args, **kwargs):
        priced.append(kwargs["layer_model"])
        return real_run_step1(*args, **kwargs)

    monkeypatch.setattr(prune_job, "run_step1", spy)
    store.set_field("step1", None)
    again = prune_job.prune_series(config, progress=False, log=lambda m: None)
    assert again.manifest.step1_layer_model == model and again.manifest.step1 is not None
    assert priced == [LayerModel.from_dict(model)]  # the recorded fit, handed to step 1


def test_filter_costs_price_late_layers_by_their_weights_under_latency():
    from pipeline.layer_times import LayerModel
    from pipeline.models import make_spec
    from pipeline.split import macs_per_filter, weights_per_filter
    from pipeline.steps import filter_costs

    spec = make_spec("vgg16", 0.5, in_channels=1)
    macs = macs_per_filter(spec)
    assert filter_costs(spec, PruneConfig()) == {g: float(m) for g, m in macs.items()}
    with pytest.raises(ValueError, match="needs the base's layer model"):
        filter_costs(spec, PruneConfig(step1_cost="latency"))
    timed = filter_costs(spec, PruneConfig(step1_cost="latency"), LayerModel(12.0, 0.13, 9.0))
    weights = weights_per_filter(spec)
    assert timed["conv5_2"] == pytest.approx(12.0 * macs["conv5_2"] / 1e6 + 0.13 * weights["conv5_2"] / 1e3)
    # at 2x2 pixels a filter's weights cost more than its MACs: conv5_2's price rises against
    # conv1_2's (32x32 pixels, few weights) several times over
    assert timed["conv5_2"] / timed["conv1_2"] > 3 * macs["conv5_2"] / macs["conv1_2"]


@pytest.mark.parametrize("arch", ["vgg16", "resnet18", "mobilenetv2"])
def test_weights_per_filter_is_the_exact_saving_of_removing_one_filter(arch):
    from pipeline.layer_times import stage_weights
    from pipeline.models import make_spec
    from pipeline.split import weights_per_filter

    spec = make_spec(arch, 0.25, in_channels=1)
    saved = weights_per_filter(spec)
    total = sum(stage_weights(spec).values())
    for name, width in spec.width_of().items():
        assert total - sum(stage_weights(spec.with_widths({name: width - 1})).values()) == saved[name]
