import json

import pytest
import torch

from pipeline import series as series_module
from pipeline.models import build, make_spec
from pipeline.series import SeriesError, SeriesStore, Variant, parse_manifest
from pipeline.surgery import remove_filters


def _entry(vid, step=0):
    return {"id": vid, "step": step, "layer": None, "split": None, "iteration": 0,
            "val_accuracy": 0.9, "test_accuracy": 0.89, "macs": 1, "splits": {}}


@pytest.fixture
def store(tmp_path):
    spec = make_spec("vgg11", 0.0625, in_channels=1)
    s = SeriesStore.create(tmp_path / "series", spec, {"name": "x"}, {"bits": 8})
    torch.manual_seed(0)
    model = build(spec).eval()
    s.add_variant(model, spec, _entry("vgg11-base"))
    pruned, pruned_spec = remove_filters(model, spec, {"conv2_1": [0, 1]})
    s.add_variant(pruned, pruned_spec, _entry("vgg11-s1-i1", 1))
    return s, model, pruned


def test_manifest_round_trip_and_identical_outputs(store):
    s, model, pruned = store
    reopened = SeriesStore.open(s.directory)
    assert reopened.ids() == ["vgg11-base", "vgg11-s1-i1"]
    x = torch.randn(2, 1, 32, 32)
    loaded, spec, entry = reopened.load_model("vgg11-s1-i1")
    assert spec.width_of()["conv2_1"] == 6 and entry.test_accuracy == 0.89
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned.eval()(x))
    with pytest.raises(SeriesError, match="unknown variant"):
        reopened.get("nope")


def test_tampered_or_missing_weights_are_refused(store):
    s, _, _ = store
    path = s.weights_path("vgg11-base")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(SeriesError, match="refusing a modified file"):
        s.load_model("vgg11-base")
    s.weights_path("vgg11-s1-i1").unlink()
    with pytest.raises(SeriesError, match="missing"):
        s.load_model("vgg11-s1-i1")


def test_a_crash_while_writing_leaves_the_previous_manifest_intact(store, monkeypatch):
    s, model, _ = store
    before = (s.directory / "manifest.json").read_text()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(series_module.os, "replace", crash)
    spec = make_spec("vgg11", 0.0625, in_channels=1)
    with pytest.raises(OSError):
        s.add_variant(model, spec, _entry("vgg11-s1-i2", 1))
    monkeypatch.undo()
    assert (s.directory / "manifest.json").read_text() == before
    reopened = SeriesStore.open(s.directory)
    assert "vgg11-s1-i2" not in reopened.ids()
    for vid in reopened.ids():  # every entry still points at a complete, valid file
        reopened.load_model(vid)


def test_malformed_manifests_are_refused(tmp_path, store):
    s, _, _ = store
    manifest = json.loads((s.directory / "manifest.json").read_text())
    manifest["variants"][0]["weights"] = "../../etc/passwd"
    (s.directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SeriesError, match="bad weights path"):
        SeriesStore.open(s.directory)
    (s.directory / "manifest.json").write_text("{not json")
    with pytest.raises(SeriesError, match="not valid JSON"):
        SeriesStore.open(s.directory)
    with pytest.raises(SeriesError, match="no model series"):
        SeriesStore.open(tmp_path / "empty")
    with pytest.raises(SeriesError, match="already holds a series"):
        SeriesStore.create(s.directory, make_spec("vgg11"), {}, {})


def test_the_typed_manifest_writes_back_what_it_read(store):
    """Keys the model does not name (a newer twostep's, a tool's) survive a rewrite, and keys
    never written stay absent: the JSON on disk is what it was plus what was set."""
    s, _, _ = store
    path = s.directory / "manifest.json"
    document = json.loads(path.read_text())
    document["a_tool_record"] = {"kept": [1, 2]}
    document["variants"][0]["removed"] = {"conv2_1": 2}
    path.write_text(json.dumps(document))
    reopened = SeriesStore.open(s.directory)
    assert reopened.manifest.to_json() == document
    reopened.set_field("base", "vgg11-base")
    assert json.loads(path.read_text()) == {**document, "base": "vgg11-base"}
    assert "onnx" not in json.loads(path.read_text())["variants"][0]


def test_a_variant_is_judged_by_its_test_accuracy_else_its_validation_accuracy(store):
    s, _, _ = store
    variant = s.get("vgg11-base")
    assert variant.accuracy == 0.89
    assert variant.model_copy(update={"test_accuracy": None}).accuracy == 0.9
    with pytest.raises(SeriesError, match="neither a test nor a validation accuracy"):
        _ = variant.model_copy(update={"test_accuracy": None, "val_accuracy": None}).accuracy


def test_a_refused_field_leaves_the_manifest_as_it_was(store):
    s, _, _ = store
    before = (s.directory / "manifest.json").read_text()
    with pytest.raises(SeriesError, match="'step1' names 'vgg11-s1-i9'"):
        s.set_field("step1", "vgg11-s1-i9")
    assert s.manifest.step1 is None
    assert (s.directory / "manifest.json").read_text() == before
    s.set_field("step1", "vgg11-s1-i1")
    assert SeriesStore.open(s.directory).manifest.step1_variant.id == "vgg11-s1-i1"


@pytest.mark.parametrize("change, fault", [
    (lambda m: m["variants"].append(dict(m["variants"][0])), "appears twice"),
    (lambda m: m["variants"][1].update(step=7), "variants.1.step"),
    (lambda m: m["variants"][0].update(test_accuracy=89.0), "variants.0.test_accuracy"),
    (lambda m: m["variants"][0].pop("sha256"), "variants.0.sha256"),
    (lambda m: m["variants"][0]["splits"].update(pool1={"bytes_p95": 3}), "bytes_mean"),
    (lambda m: m.update(base="vgg11-nope"), "'base' names"),
    (lambda m: m["variants"][0].update(onnx={"pool1": {"head": {"path": "/etc/x", "sha256": "0"}}}),
     "bad graph path"),
])
def test_each_fault_of_a_manifest_is_named(store, change, fault):
    s, _, _ = store
    document = json.loads((s.directory / "manifest.json").read_text())
    change(document)
    with pytest.raises(SeriesError, match=fault):
        parse_manifest(json.dumps(document).encode(), "here")


def test_reordering_keeps_exactly_the_variants(store):
    s, _, _ = store
    first, second = s.variants
    s.reorder([second, first])
    assert SeriesStore.open(s.directory).ids() == ["vgg11-s1-i1", "vgg11-base"]
    with pytest.raises(SeriesError, match="exactly the series' variants"):
        s.reorder([first])
    assert isinstance(s.get("vgg11-base"), Variant)
