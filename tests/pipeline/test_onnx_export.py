"""`twostep export`: ONNX heads and tails equal the PyTorch halves, are recorded with their sha256,
and a failed export leaves the series as it was."""

import hashlib
import json
import shutil

import numpy as np
import pytest

from pipeline.onnx_export import ExportError, export_series
from pipeline.series import SeriesError, SeriesStore, validate_manifest
from serve.runner import VariantRunner

PIXELS = np.random.default_rng(1).integers(0, 256, (6, 1, 32, 32), dtype=np.uint8)


@pytest.fixture
def series(tiny_store, tmp_path):
    shutil.copytree(tiny_store.directory, tmp_path / "series")
    return tmp_path / "series"


def test_export_records_checked_graphs_that_the_onnx_runner_loads(series):
    records = export_series(series, PIXELS, variants=["vgg11-base"], splits=["input", "pool2", "output"])
    assert set(records["vgg11-base"]) == {"input", "pool2", "output"}
    store = SeriesStore.open(series)
    entry = store.get("vgg11-base").onnx
    assert entry["input"].head is None and entry["output"].tail is None
    for split in ("pool2",):
        for part in ("head", "tail"):
            graph = getattr(entry[split], part)
            data = (series / graph.path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == graph.sha256 and len(data) == graph.bytes
        assert entry[split].max_abs_diff < 1e-3
        assert entry[split].images == len(PIXELS)
    assert store.manifest.onnx_export["opset"] == 18
    assert "onnx" not in store.get("vgg11-s2-conv5_2-i1").to_json()  # not asked for

    # The ONNX runner runs the recorded graphs: same logits as the PyTorch runner, and a graph
    # file that no longer matches its sha256 is refused.
    torch_runner = VariantRunner.load(store, "vgg11-base", runtime="torch")
    onnx_runner = VariantRunner.load(store, "vgg11-base", runtime="onnxruntime")
    for split in ("input", "pool2", "conv3_1", "output"):
        expected = torch_runner.run_head(PIXELS, split)
        got = onnx_runner.run_head(PIXELS, split)
        if split == "output":
            np.testing.assert_allclose(got.logits, expected.logits, atol=1e-4)
            continue
        tails = [r.run_tail(expected.frame, split).logits for r in (torch_runner, onnx_runner)]
        np.testing.assert_allclose(tails[1], tails[0], atol=1e-4)
    (series / entry["pool2"].tail.path).write_bytes(b"not a graph")
    with pytest.raises(SeriesError, match="sha256"):
        VariantRunner.load(SeriesStore.open(series), "vgg11-base", runtime="onnxruntime").run_tail(
            torch_runner.run_head(PIXELS, "pool2").frame, "pool2")


def test_a_failed_export_leaves_the_manifest_and_no_new_files(series):
    before = (series / "manifest.json").read_bytes()
    bad = np.zeros((2, 3, 32, 32), np.uint8)  # three channels for a grey model: the check fails
    with pytest.raises(ExportError, match="vgg11-base @ pool1"):
        export_series(series, bad, variants=["vgg11-base"], splits=["pool1", "pool2"])
    assert (series / "manifest.json").read_bytes() == before
    # a failure after the first variant's graphs were written (here: the second cannot be)
    (series / "onnx").mkdir(exist_ok=True)
    (series / "onnx" / "vgg11-s2-conv5_2-i1").write_text("a file where a folder must go")
    with pytest.raises(OSError):
        export_series(series, PIXELS, variants=["vgg11-base", "vgg11-s2-conv5_2-i1"], splits=["pool5"])
    assert (series / "manifest.json").read_bytes() == before
    assert not list(series.rglob("*.onnx"))


def test_reexport_replaces_files_and_bad_choices_are_named(series):
    export_series(series, PIXELS, variants=["vgg11-base"], splits=["pool3"])
    export_series(series, PIXELS[:2], variants=["vgg11-base"], splits=["pool3"])
    files = sorted(p.name for p in (series / "onnx").rglob("*.onnx"))
    assert len(files) == 2  # the same graphs: same content-addressed names, nothing orphaned
    with pytest.raises(SeriesError, match="unknown variant"):
        export_series(series, PIXELS, variants=["vgg11-nope"])
    with pytest.raises(ExportError, match="offers no split 'conv1_1'"):
        export_series(series, PIXELS, variants=["vgg11-s2-conv5_2-i1"], splits=["conv1_1"])


def test_a_manifest_pointing_a_graph_outside_the_series_is_refused(series):
    manifest = json.loads((series / "manifest.json").read_text())
    manifest["variants"][0]["onnx"] = {"pool1": {"head": {"path": "onnx/../../etc/passwd", "sha256": "0"},
                                                 "tail": None}}
    with pytest.raises(SeriesError, match="bad graph path"):
        validate_manifest(manifest)
