import shutil

import pytest

from pipeline import prune_job
from pipeline.checkpoint import save_checkpoint
from pipeline.config import PruneConfig
from pipeline.models.registry import build
from pipeline.report import format_series_table
from pipeline.series import SeriesError, SeriesStore
from pipeline.step1_continue import FIELD


@pytest.fixture(scope="module")
def finished(base_checkpoint, learnable_fashion_dir, tmp_path_factory):
    """A series whose step 1 stopped at its last allowed iteration (1), without step 2."""
    config = _config(base_checkpoint, learnable_fashion_dir,
                     tmp_path_factory.mktemp("src") / "series", step1_max_iterations=1)
    return prune_job.prune_series(config, steps="1", progress=False, log=lambda m: None), config


def _config(base, data_dir, out, **kw):
    settings = dict(base=str(base), data_dir=str(data_dir), out=str(out), rank_batches=1,
                    batch_size=32, step1_finetune_epochs=0.1, step2_finetune_epochs=0.1,
                    step1_budget=1.0, step2_steps=2, bytes_images=8, augment=False,
                    step2_splits=("pool5",), step1_time_calls=False)
    settings.update(kw)
    return PruneConfig(**settings)


def test_step1_goes_on_from_the_source_in_a_new_series_and_resumes(finished, tmp_path):
    source, config = finished
    source_manifest = source.directory / "manifest.json"
    source_bytes = source_manifest.read_bytes()
    (tmp_path / "deeper" / "tune").mkdir(parents=True)  # `--ray` makes its run directory first
    go_on = config.model_copy(update={"out": str(tmp_path / "deeper"), "step1_max_iterations": 2,
                                      "step1_continue_from": str(source.directory), "threads": 2})
    said = []
    store = prune_job.prune_series(go_on, steps="1", progress=False, log=said.append)
    assert any("from the step-1 iterations of" in line for line in said)
    assert not (tmp_path / "deeper.continuing").exists()
    assert source_manifest.read_bytes() == source_bytes  # the source is only read
    s1 = store.manifest.step(1)
    assert [v.iteration for v in s1] == [1, 2]
    copied = source.manifest.step1_variant
    assert store.get(copied.id).sha256 == copied.sha256  # the same weights, byte for byte
    assert store.get(copied.id).test_accuracy == copied.test_accuracy
    assert store.manifest.step1 == s1[1].id and s1[1].macs < copied.macs
    record = getattr(store.manifest, FIELD)
    assert record["kept"] == copied.id and record["variants"] == [source.manifest.base, copied.id]
    assert f"step 1 went on from {source.directory} (its {copied.id}" in format_series_table(store.manifest)
    # resumed as any series: step 2 on the new kept model, nothing of step 1 redone
    shas = {v.id: v.sha256 for v in store.variants}
    again = prune_job.prune_series(go_on, progress=False, log=lambda m: None)
    assert {v.id: v.sha256 for v in again.variants if v.id in shas} == shas
    assert {v.layer for v in again.manifest.step(2)} == {"conv5_2"}


def test_what_cannot_go_on_is_refused_with_the_reason(finished, tmp_path):
    source, config = finished
    here = {"out": str(tmp_path / "x"), "step1_continue_from": str(source.directory)}
    cases = [
        ({"step1_max_iterations": 1}, "allows no more"),
        ({"step1_max_iterations": 3, "step1_divisor": 8}, r"other step1_divisor \(16, here 8\)"),
        ({"step1_max_iterations": 3, "step1_continue_from": str(tmp_path / "none")}, "no model series"),
        ({"step1_max_iterations": 3, "step1_target_mac_reduction": 1.01}, "asks for no more"),
    ]
    for update, message in cases:
        with pytest.raises(SeriesError, match=message):
            prune_job.prune_series(config.model_copy(update={**here, **update}), steps="1",
                                   progress=False, log=lambda m: None)
        assert not (tmp_path / "x").exists() and not (tmp_path / "x.continuing").exists()


def test_a_source_that_ended_before_its_target_or_last_iteration_is_refused(finished, tmp_path):
    """Its next iteration was rolled back (or had nothing to cut): going on would repeat it."""
    source, config = finished
    ended = tmp_path / "ended"
    shutil.copytree(source.directory, ended)
    store = SeriesStore.open(ended)
    store.set_field("config", {**store.manifest.config, "step1_max_iterations": 5})
    go_on = config.model_copy(update={"out": str(tmp_path / "x"), "step1_max_iterations": 5,
                                      "step1_continue_from": str(ended)})
    with pytest.raises(SeriesError, match="ended step 1 at iteration 1 .* would repeat it"):
        prune_job.prune_series(go_on, steps="1", progress=False, log=lambda m: None)


def test_a_base_retrained_at_the_same_path_is_refused(finished, tmp_path):
    source, config = finished
    spec = source.manifest.base_arch
    other = tmp_path / "retrained.safetensors"
    save_checkpoint(other, build(spec), spec)  # the same architecture, other weights
    moved = tmp_path / "source"
    shutil.copytree(source.directory, moved)
    SeriesStore.open(moved).set_field("config", {**source.manifest.config, "base": str(other)})
    go_on = config.model_copy(update={"out": str(tmp_path / "x"), "step1_max_iterations": 2,
                                      "base": str(other), "step1_continue_from": str(moved)})
    with pytest.raises(SeriesError, match="base is not the checkpoint"):
        prune_job.prune_series(go_on, steps="1", progress=False, log=lambda m: None)


def test_a_source_from_a_tune_search_is_held_to_the_winners_settings(finished, tmp_path):
    source, config = finished
    searched = tmp_path / "searched"
    shutil.copytree(source.directory, searched)
    SeriesStore.open(searched).set_field("step1_search", {"overrides": {"step1_divisor": 8}})
    go_on = config.model_copy(update={"out": str(tmp_path / "x"), "step1_max_iterations": 2,
                                      "step1_continue_from": str(searched)})
    with pytest.raises(SeriesError, match=r"other step1_divisor \(8, here 16\)"):
        prune_job.prune_series(go_on, steps="1", progress=False, log=lambda m: None)
