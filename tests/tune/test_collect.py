"""Trial checkpoints -> series: format round trip, strict iteration order, canonical order."""

import json

import pytest
import torch

from pipeline.models.registry import build
from pipeline.series import SeriesError, SeriesStore
from tune.collect import (
    ENTRY_FILE,
    VariantSink,
    append_run_log,
    copy_variants,
    read_run_log,
    read_trial_checkpoint,
    sort_variants,
    write_trial_checkpoint,
)
from tune.plan import variant_order


def _step2_checkpoint(directory, spec, make_entry, iteration, layer="conv2_1", seed=0):
    torch.manual_seed(seed)
    narrow = spec.with_widths({layer: 8 - iteration})
    model = build(narrow)
    write_trial_checkpoint(directory, model, narrow, make_entry(narrow, 2, iteration, layer),
                           stop_reason=None)
    return model


def test_trial_checkpoint_round_trip(tmp_path, spec, make_entry):
    model = build(spec)
    entry = make_entry(spec, 1, 3, removed={"conv1_1": 1})
    write_trial_checkpoint(tmp_path / "ckpt", model, spec, entry, stop_reason="reached it")
    loaded, loaded_spec, loaded_entry, stop = read_trial_checkpoint(tmp_path / "ckpt")
    assert loaded_spec == spec and loaded_entry == entry and stop == "reached it"
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])


def test_trial_checkpoint_rejects_foreign_or_inconsistent_files(tmp_path, spec, make_entry):
    with pytest.raises(SeriesError, match="not a trial checkpoint"):
        read_trial_checkpoint(tmp_path)
    write_trial_checkpoint(tmp_path / "a", build(spec), spec, make_entry(spec, 1, 1))
    document = json.loads((tmp_path / "a" / ENTRY_FILE).read_text())
    (tmp_path / "a" / ENTRY_FILE).write_text(json.dumps({**document, "format": "pickle"}))
    with pytest.raises(SeriesError, match="twostep-trial-checkpoint"):
        read_trial_checkpoint(tmp_path / "a")
    document["entry"]["test_accuracy"] = 89.0  # a percentage: refused, naming the field
    (tmp_path / "a" / ENTRY_FILE).write_text(json.dumps(document))
    with pytest.raises(SeriesError, match="test_accuracy"):
        read_trial_checkpoint(tmp_path / "a")
    entry = make_entry(spec, 1, 1).model_copy(update={"id": "vgg11-s1-i9"})
    write_trial_checkpoint(tmp_path / "b", build(spec), spec, entry)
    with pytest.raises(SeriesError, match="does not match"):
        read_trial_checkpoint(tmp_path / "b")


def test_sink_adds_in_order_replaces_repeats_and_refuses_holes(tmp_path, store, spec, make_entry):
    sink = VariantSink(store, step=2, layer="conv2_1", next_iteration=1)
    _step2_checkpoint(tmp_path / "c1", spec, make_entry, 1)
    _step2_checkpoint(tmp_path / "c3", spec, make_entry, 3)
    sink.add(tmp_path / "c1")
    with pytest.raises(SeriesError, match="skips iteration 2"):
        sink.add(tmp_path / "c3")
    replacement = _step2_checkpoint(tmp_path / "c1b", spec, make_entry, 1, seed=7)
    sink.add(tmp_path / "c1b")  # a trial restored from an older checkpoint repeats i1
    _step2_checkpoint(tmp_path / "c2", spec, make_entry, 2)
    sink.add(tmp_path / "c2")
    assert store.ids() == ["vgg11-base", "vgg11-s2-conv2_1-i1", "vgg11-s2-conv2_1-i2"]
    assert sink.added == ["vgg11-s2-conv2_1-i1", "vgg11-s2-conv2_1-i1", "vgg11-s2-conv2_1-i2"]
    reopened = SeriesStore.open(store.directory)  # written incrementally, loads as it is
    model, _, _ = reopened.load_model("vgg11-s2-conv2_1-i1")
    assert torch.equal(model.state_dict()["classifier.linear.weight"],
                       replacement.state_dict()["classifier.linear.weight"])
    with pytest.raises(SeriesError, match="not step 2 of conv3_2"):
        VariantSink(store, step=2, layer="conv3_2", next_iteration=1).add(tmp_path / "c1")


def test_sort_variants_persists_the_canonical_order(tmp_path, store, spec, make_entry):
    for directory, layer, iteration in (("a", "conv3_2", 1), ("b", "conv1_1", 1)):
        _step2_checkpoint(tmp_path / directory, spec, make_entry, iteration, layer)
        VariantSink(store, 2, layer, 1).add(tmp_path / directory)
    smaller = spec.with_widths({"conv1_1": 3})
    store.add_variant(build(smaller), smaller, make_entry(smaller, 1, 1))
    sort_variants(store, variant_order(spec))
    expected = ["vgg11-base", "vgg11-s1-i1", "vgg11-s2-conv1_1-i1", "vgg11-s2-conv3_2-i1"]
    assert store.ids() == expected
    assert SeriesStore.open(store.directory).ids() == expected


def test_copy_variants_between_stores(tmp_path, store, spec, make_entry):
    other = SeriesStore.create(tmp_path / "other", spec, {}, {}, {})
    copy_variants(store, other, ["vgg11-base"])
    assert other.ids() == ["vgg11-base"]
    assert other.get("vgg11-base").val_accuracy == store.get("vgg11-base").val_accuracy
    other.load_model("vgg11-base")


def test_run_log_appends_json_lines(tmp_path):
    path = tmp_path / "runs.jsonl"
    assert read_run_log(path) == []
    append_run_log(path, {"phase": "step1"})
    append_run_log(path, {"phase": "step2", "trials": {"step2-conv1_1": {"failures": 1}}})
    assert [r["phase"] for r in read_run_log(path)] == ["step1", "step2"]
