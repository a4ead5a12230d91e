"""Profiles timed with ONNX Runtime: measured head times where asked, MAC-weighted in between,
the same document form as PyTorch profiles."""

import pytest

from pipeline.models import make_spec
from pipeline.models.registry import build
from pipeline.onnx_profile import _spread, profile_onnx
from pipeline.profiler import median_ms, profile_document, validate_profile
from pipeline.split import split_points


def test_spread_hits_every_measured_split_and_never_goes_negative():
    names = ["conv1", "pool1", "conv2", "pool2", "output"]
    macs = {"conv1": 100, "pool1": 0, "conv2": 300, "pool2": 0, "output": 10}
    layers = _spread(names, macs, {"pool1": 1.0, "pool2": 0.8, "output": 3.0})  # noise: 0.8 < 1.0
    sums = [sum(layers[: i + 1]) for i in range(len(names))]
    assert sums[1] == pytest.approx(1.0) and sums[3] == pytest.approx(1.0) and sums[4] == pytest.approx(3.0)
    assert all(ms >= 0 for ms in layers)
    assert layers[0] > layers[1]  # the conv, with MACs, takes most of its segment


def test_profile_onnx_measures_the_splits_asked_for_and_validates():
    spec = make_spec("vgg11", 0.0625, in_channels=1)
    entry = profile_onnx(build(spec).eval(), spec, ["pool2", "pool4"], warmup=1, repeats=3)
    assert entry["measured_splits"] == ["pool2", "pool4", "output"]
    assert set(entry["head_ms"]) == set(split_points(spec))
    assert 0 < entry["head_ms"]["pool2"] <= entry["head_ms"]["pool4"] <= entry["total_ms"]
    # the whole model's own time; the cumulative total never falls below an earlier split's
    assert entry["total_ms"] >= entry["whole_ms"] * (1 - 1e-9) and entry["whole_ms"] > 0
    doc = profile_document({"v": entry}, 1, 1, 3, runtime="onnxruntime", idle_ms=0.0)
    assert validate_profile(doc)["runtime"] == "onnxruntime"
    with pytest.raises(ValueError, match="runtime must be one of"):
        validate_profile({**doc, "runtime": "tensorrt"})


def test_idle_time_is_checked():
    with pytest.raises(ValueError, match="idle_ms"):
        median_ms([lambda: None], 0, 1, idle_ms=-1.0)
