"""`twostep prune --ray` on a real (shared, 2-CPU) Ray session with a tiny model and data.

One run goes through everything (Tune runs are the expensive part here): step 1 as a trial,
step 2 as three trials on two CPUs, where conv3_2's worker exits (os._exit) after i1 with no
retries, so the run fails; the same call then resumes it, conv3_2's worker dies again after i2
and Tune restarts it from its checkpoint. The series that comes out equals the in-process one.
A step-1 search runs separately.
"""

from pathlib import Path

import pytest
import torch

from pipeline.base_model import train_base
from pipeline.config import PruneConfig, TrainConfig
from pipeline.prune_job import prune_series
from pipeline.series import SeriesStore

pytestmark = pytest.mark.integration

# three layers (conv1_1, conv2_1 via pool2, conv3_2), each with a three-width ladder
SPLITS = ("conv1_1", "pool2", "conv3_2")


def _quiet(message):
    pass


@pytest.fixture(scope="module")
def base_checkpoint(learnable_fashion_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune-base") / "base.safetensors"
    train_base(TrainConfig(data_dir=str(learnable_fashion_dir), arch="vgg11", width=0.0625,
                           epochs=3, lr=0.05, augment=False, threads=1, out=str(out)),
               progress=False, log=None)
    return out


@pytest.fixture(scope="module")
def config(base_checkpoint, learnable_fashion_dir):
    return PruneConfig(
        base=str(base_checkpoint), data_dir=str(learnable_fashion_dir), out="unset", threads=1,
        rank_batches=2, batch_size=64, step1_divisor=8, step1_finetune_epochs=0.25,
        step1_budget=1.0, step1_max_iterations=2, step2_steps=3, step2_finetune_epochs=0.25,
        bytes_images=16, augment=False, step2_splits=SPLITS)


@pytest.fixture(scope="module")
def tune_run(ray_session, config, tmp_path_factory):
    """Run 1 fails after step 1 and part of step 2; run 2 is the same call and finishes it."""
    from tune.launch import TrialsFailedError, launch_pruning

    root = tmp_path_factory.mktemp("tune-run")
    config = config.replace(out=str(root / "series"))
    with pytest.raises(TrialsFailedError, match="step2-conv3_2"):
        launch_pruning(config, progress=False, log=_quiet, max_failures=0, inject_failure={
            "key": "step2-conv3_2", "after_iteration": 1, "marker": str(root / "died-1")})
    partial = SeriesStore.open(config.out)
    store = launch_pruning(config, progress=False, log=_quiet, max_failures=2, inject_failure={
        "key": "step2-conv3_2", "after_iteration": 2, "marker": str(root / "died-2")})
    return {"partial": partial, "store": store, "root": root}


@pytest.fixture(scope="module")
def tune_series(tune_run):
    return tune_run["store"]


def _same_weights(a: SeriesStore, b: SeriesStore, vid: str) -> bool:
    wa, wb = a.load_model(vid)[0].state_dict(), b.load_model(vid)[0].state_dict()
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _run_log(store: SeriesStore) -> list[dict]:
    from tune.collect import read_run_log
    from tune.launch import RUN_LOG

    return read_run_log(store.directory / RUN_LOG)


def test_fan_out_gives_the_in_process_series(tune_series, config, tmp_path):
    reference = prune_series(config.replace(out=str(tmp_path / "in-process")),
                             progress=False, log=_quiet)
    ours = SeriesStore.open(tune_series.directory)
    assert ours.ids() == reference.ids()  # same variants, same (canonical) order
    ladders = {v.layer: v.ladder for v in ours.manifest.step(2)}
    assert set(ladders) == {"conv1_1", "conv2_1", "conv3_2"}
    assert len(ours.manifest.step(2)) == sum(map(len, ladders.values()))
    assert ours.manifest.step1 == reference.manifest.step1
    for mine, theirs in zip(ours.variants, reference.variants, strict=True):
        assert mine.spec == theirs.spec  # the widths
        assert getattr(mine, "ladder", None) == getattr(theirs, "ladder", None)
        assert {s: b.elements for s, b in mine.splits.items()} == \
            {s: b.elements for s, b in theirs.splits.items()}
        # prune_series ranks every layer's first cut on its one in-memory step-1 model, and
        # ranking runs train-mode passes that move that model's BN statistics, so ladders after
        # the first start from slightly different statistics than the stored step-1 model each
        # trial starts from; on 100 test images that is worth a few images.
        assert abs(mine.val_accuracy - theirs.val_accuracy) <= 0.2
        assert abs(mine.test_accuracy - theirs.test_accuracy) <= 0.2
    # step 1 and the first ladder are the very same computation: identical weights
    first_ladder = [v.id for v in ours.variants if v.layer == "conv1_1"]
    for vid in ["vgg11-base", "vgg11-s1-i1", "vgg11-s1-i2", *first_ladder]:
        assert _same_weights(ours, reference, vid), vid


def test_fan_out_equals_in_process_runs_from_the_stored_step1_model(tune_series, config, tmp_path):
    """The in-process driver resumed per layer starts each ladder from the stored step-1 model,
    as the trials do: then the series agree weight for weight and accuracy for accuracy."""
    reference_config = config.replace(out=str(tmp_path / "in-process"))
    prune_series(reference_config, steps="1", progress=False, log=_quiet)
    for split in SPLITS:
        reference = prune_series(reference_config.replace(step2_splits=(split,)),
                                 progress=False, log=_quiet)
    assert tune_series.ids() == reference.ids()
    for mine, theirs in zip(tune_series.variants, reference.variants, strict=True):
        assert {k: v for k, v in mine.to_json().items() if k != "sha256"} == \
            {k: v for k, v in theirs.to_json().items() if k != "sha256"}
        assert _same_weights(tune_series, reference, mine.id), mine.id


def test_run_directory_holds_tune_logs_and_the_run_log(tune_series):
    run_dir = tune_series.directory / "tune"
    assert list(run_dir.glob("step2-*/step2-conv2_1/events.out.tfevents*"))  # TensorBoard
    assert list(run_dir.glob("step1-*/step1/progress.csv"))
    phases = _run_log(tune_series)
    assert [p["phase"] for p in phases] == ["step1", "step2", "step2"]  # step 1 ran once
    ladder = tune_series.get("vgg11-s2-conv2_1-i1").ladder
    trial = phases[1]["trials"]["step2-conv2_1"]
    assert trial["iterations"] == list(range(1, len(ladder) + 1)) and trial["failures"] == 0


def test_interrupted_run_leaves_a_usable_partial_series(tune_run):
    partial, store = tune_run["partial"], tune_run["store"]
    assert len(store.get("vgg11-s2-conv3_2-i1").ladder) >= 3  # room to die twice
    step2 = [v.id for v in partial.manifest.step(2)]
    finished = [v.id for v in store.variants if v.layer in ("conv1_1", "conv2_1")]
    assert sorted(step2) == sorted([*finished, "vgg11-s2-conv3_2-i1"])
    for vid in step2:
        partial.load_model(vid)  # every recorded variant loads (sha256 checked)


def test_resumed_run_does_not_repeat_finished_trials(tune_run):
    partial, store = tune_run["partial"], tune_run["store"]
    _, first, second = _run_log(store)
    assert set(first["trials"]) == {"step2-conv1_1", "step2-conv2_1", "step2-conv3_2"}
    assert first["trials"]["step2-conv3_2"]["iterations"] == [1]
    assert first["trials"]["step2-conv3_2"]["error"]
    assert set(second["trials"]) == {"step2-conv3_2"}  # finished ladders were skipped
    for entry in partial.variants:  # and what was recorded stays untouched
        assert store.get(entry.id).sha256 == entry.sha256


def test_killed_trial_resumes_from_its_checkpoint(tune_run):
    store, root = tune_run["store"], tune_run["root"]
    assert (root / "died-1").exists() and (root / "died-2").exists()  # the workers did exit
    trial = _run_log(store)[-1]["trials"]["step2-conv3_2"]
    assert trial["failures"] == 1 and trial["error"] is None
    # run 2 started after the recorded i1; the restarted worker went on after its i2 checkpoint
    n = len(store.get("vgg11-s2-conv3_2-i1").ladder)
    assert trial["iterations"] == list(range(2, n + 1))
    assert trial["collected"] == [f"vgg11-s2-conv3_2-i{i}" for i in range(2, n + 1)]
    ids = store.ids()
    assert len(ids) == len(set(ids)) and f"vgg11-s2-conv3_2-i{n}" in ids  # none repeated or lost


def test_step1_search_keeps_the_stated_best(ray_session, config, tmp_path):
    from tune.launch import launch_pruning
    from tune.plan import Step1Search

    search = Step1Search(divisors=(4, 16), metric="macs")
    store = launch_pruning(config.replace(out=str(tmp_path / "series"),
                                               step1_max_iterations=1),
                           steps="1", search=search, progress=False, log=_quiet)
    result = store.manifest.step1_search
    assert set(result["candidates"]) == {"step1-d4-b1", "step1-d16-b1"}
    # the budget admits both; removing a quarter of the filters per iteration leaves fewer MACs
    assert result["chosen"] == "step1-d4-b1"
    kept = store.manifest.step1_variant
    assert kept.macs == min(c["macs"] for c in result["candidates"].values())
    assert [v.id for v in store.manifest.step(1)] == ["vgg11-s1-i1"]
    assert (Path(store.directory) / "search" / "step1-d16-b1" / "manifest.json").is_file()


def test_storage_check_accepts_a_path_or_uri_every_node_shares(ray_session, tmp_path):
    import ray

    from tune.storage import check_storage

    alive = sum(1 for n in ray.nodes() if n["Alive"])
    assert len(check_storage(str(tmp_path / "tune"))) == alive
    assert len(check_storage(f"file://{tmp_path / 'tune-uri'}")) == alive
    assert not any(p.name.startswith(".twostep-storage-probe") for p in (tmp_path / "tune").iterdir())


def test_storage_check_names_the_fix_for_storage_it_cannot_use(ray_session, tmp_path):
    from tune.storage import StorageError, check_storage

    with pytest.raises(StorageError, match="--storage-path"):
        check_storage("nosuchscheme://bucket/prefix")
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StorageError, match="not writable from the driver"):
        check_storage(str(tmp_path / "file" / "tune"))
