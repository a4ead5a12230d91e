"""Profiler: per-stage timings of a tiny VGG, the profile file format, derived device profiles,
and `twostep profile` on a checkpoint and on a series directory."""

import json
import math

import pytest
import torch

from pipeline.checkpoint import save_checkpoint
from pipeline.models import build, make_spec
from pipeline.profiler import (
    FORMAT,
    derive_profile,
    load_profile,
    profile_document,
    profile_model,
    save_profile,
    timings_from_layers,
)
from pipeline.split import split_points
from twostep.cli import main

SPEC = make_spec("vgg11", 0.0625, in_channels=1)


@pytest.fixture(scope="module")
def measured():
    model = build(SPEC).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    entry = profile_model(model, SPEC, batch_size=2, warmup=1, repeats=3)
    # the inference form is timed; the caller's model (training mode, BN statistics) is untouched
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    return entry


def _doc(entry):
    return profile_document({"base": entry}, batch_size=2, warmup=1, repeats=3)


def test_profile_has_every_split_and_consistent_sums(measured):
    splits = split_points(SPEC)
    assert list(measured["head_ms"]) == splits and set(measured["tail_ms"]) == set(splits)
    assert [layer["name"] for layer in measured["layers"]] == splits[1:]
    assert all(layer["ms"] > 0 for layer in measured["layers"])
    head = [measured["head_ms"][s] for s in splits]
    tail = [measured["tail_ms"][s] for s in splits]
    assert head[0] == 0 and tail[-1] == 0
    assert all(a <= b for a, b in zip(head, head[1:], strict=False))
    assert all(a >= b for a, b in zip(tail, tail[1:], strict=False))
    total = measured["total_ms"]
    assert total == pytest.approx(sum(layer["ms"] for layer in measured["layers"]))
    for s in splits:
        assert measured["head_ms"][s] + measured["tail_ms"][s] == pytest.approx(total, rel=1e-9)
    assert measured["whole_ms"] > 0


def test_profile_model_rejects_bad_counts():
    with pytest.raises(ValueError, match="repeats"):
        profile_model(build(SPEC), SPEC, repeats=0)
    with pytest.raises(ValueError, match="batch_size"):
        profile_model(build(SPEC), SPEC, batch_size=0)


def test_save_load_round_trip(tmp_path, measured):
    doc = _doc(measured)
    assert doc["format"] == FORMAT and doc["derived_from"] is None and doc["slowdown"] == 1.0
    assert {"hostname", "cpu_count", "torch", "threads"} <= set(doc["machine"])
    save_profile(tmp_path / "p.json", doc)
    assert load_profile(tmp_path / "p.json") == doc
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]


def _write(path, doc):
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def test_load_rejects_bad_files(tmp_path, measured):
    good = _doc(measured)
    with pytest.raises(FileNotFoundError):
        load_profile(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_profile(_write(tmp_path / "a.json", "{not json"))
    with pytest.raises(ValueError, match="format"):
        load_profile(_write(tmp_path / "b.json", {**good, "format": "other/1"}))
    missing = {k: v for k, v in good.items() if k != "variants"}
    with pytest.raises(ValueError, match="variants"):
        load_profile(_write(tmp_path / "c.json", missing))
    negative = json.loads(json.dumps(good))
    negative["variants"]["base"]["layers"][0]["ms"] = -1.0
    with pytest.raises(ValueError, match="-1.0"):
        load_profile(_write(tmp_path / "d.json", negative))
    broken = json.loads(json.dumps(good))
    broken["variants"]["base"]["tail_ms"]["conv1_1"] += 5.0
    with pytest.raises(ValueError, match="not total_ms"):
        load_profile(_write(tmp_path / "e.json", broken))
    nan = json.loads(json.dumps(good))
    nan["variants"]["base"]["total_ms"] = math.nan
    with pytest.raises(ValueError, match="finite"):
        load_profile(_write(tmp_path / "f.json", json.dumps(nan)))
    with pytest.raises(ValueError, match="slowdown"):
        load_profile(_write(tmp_path / "g.json", {**good, "slowdown": 0}))


def test_derive_profile_scales_and_records_its_source(measured):
    edge = _doc(measured)
    device = derive_profile(edge, 5)
    assert device["slowdown"] == 5.0 and device["derived_from"]["slowdown"] == 5.0
    assert device["derived_from"]["hostname"] == edge["machine"]["hostname"]
    e, d = edge["variants"]["base"], device["variants"]["base"]
    assert d["total_ms"] == pytest.approx(5 * e["total_ms"])
    for s in e["head_ms"]:
        assert d["head_ms"][s] == pytest.approx(5 * e["head_ms"][s])
        assert d["tail_ms"][s] == pytest.approx(5 * e["tail_ms"][s])
    assert edge["derived_from"] is None  # the source is not modified
    assert derive_profile(device, 2)["slowdown"] == 10.0
    for bad in (0, -1, math.nan, math.inf, "5"):
        with pytest.raises(ValueError, match="slowdown"):
            derive_profile(edge, bad)


def test_timings_from_layers_hand_checked():
    entry = timings_from_layers(["conv1_1", "pool1", "output"], [1.0, 0.5, 0.25])
    assert entry["head_ms"] == {"input": 0.0, "conv1_1": 1.0, "pool1": 1.5, "output": 1.75}
    assert entry["tail_ms"] == {"input": 1.75, "conv1_1": 0.75, "pool1": 0.25, "output": 0.0}
    with pytest.raises(ValueError, match="output"):
        timings_from_layers(["conv1_1"], [1.0])


def _series(root):
    variants = []
    for vid, widths in (("vgg11-s0-i0", {}), ("vgg11-s2-i1", {"conv3_1": 2})):
        spec = SPEC.with_widths(widths)
        sha = save_checkpoint(root / "weights" / f"{vid}.safetensors", build(spec), spec)
        variants.append({"id": vid, "weights": f"weights/{vid}.safetensors", "sha256": sha,
                         "spec": spec.to_dict(), "splits": {}, "step": 0, "split": None,
                         "iteration": 0, "val_accuracy": 0.5, "test_accuracy": 0.5, "macs": 1})
    manifest = {"format": "twostep-series/1", "base_spec": SPEC.to_dict(), "data": {}, "codec": {},
                "variants": variants}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def test_cli_profile_series_and_checkpoint(tmp_path, capsys):
    _series(tmp_path)
    argv = ["profile", str(tmp_path), "--repeats", "2", "--warmup", "1", "--slowdown", "5"]
    assert main(argv) == 0
    edge = load_profile(tmp_path / "profile.json")
    device = load_profile(tmp_path / "profile.device.json")
    assert set(edge["variants"]) == {"vgg11-s0-i0", "vgg11-s2-i1"}
    assert device["slowdown"] == 5.0 and device["derived_from"] is not None
    # the planner charges encode/decode time from the codec entry every profile now carries
    assert edge["runtime"] == "onnxruntime" and edge["codec"]["encode_ms"][0] > 0
    assert "gap" in capsys.readouterr().out
    argv = ["profile", str(tmp_path), "--runtime", "torch", "-o", str(tmp_path / "torch.json"),
            "--repeats", "2", "--warmup", "1", "--idle-ms", "1"]
    assert main(argv) == 0
    eager = load_profile(tmp_path / "torch.json")
    assert eager["runtime"] == "torch" and eager["idle_ms"] == 1.0 and "codec" in eager
    assert set(eager["variants"]) == set(edge["variants"])
    out = tmp_path / "one.json"
    ckpt = tmp_path / "weights" / "vgg11-s0-i0.safetensors"
    threads = torch.get_num_threads()
    try:
        assert main(["profile", str(ckpt), "-o", str(out), "--repeats", "2", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert list(load_profile(out)["variants"]) == ["base"]


def test_cli_profile_errors_exit_2(tmp_path, capsys):
    manifest = _series(tmp_path)
    manifest["variants"][0]["sha256"] = "0" * 64
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert main(["profile", str(tmp_path), "--repeats", "1"]) == 2
    assert "refusing a modified file" in capsys.readouterr().err
    manifest["variants"][0]["weights"] = "../outside.safetensors"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert main(["profile", str(tmp_path), "--repeats", "1"]) == 2
    assert "../outside.safetensors" in capsys.readouterr().err
    assert main(["profile", str(tmp_path / "nope")]) == 2
    assert main(["profile", str(tmp_path), "--device", "warp-drive"]) == 2
    assert "warp-drive" in capsys.readouterr().err
    assert main(["profile", str(tmp_path), "--runtime", "torch", "--device", "auto"]) == 2
    assert "got 'auto'" in capsys.readouterr().err
    ckpt = tmp_path / "weights" / "vgg11-s0-i0.safetensors"
    assert main(["profile", str(ckpt), "-o", str(tmp_path / "x.json"), "--repeats", "0"]) == 2
    assert "repeats" in capsys.readouterr().err


def test_codec_timing_fits_and_charges_frames_in_selection(tiny_store, tmp_path):
    from pipeline.codec import CodecConfig
    from pipeline.profiler import codec_ms, codec_timing, derive_profile, save_profile
    from pipeline.selection import baseline_candidates, candidates_from_series
    from serve.profiles import estimate_profile

    timing = codec_timing(CodecConfig(), sizes=(256, 4096, 32768), repeats=3)
    assert timing["encode_ms"][1] > 0 and timing["decode_ms"][1] > 0
    store = tiny_store
    edge = estimate_profile(store.manifest, ms_per_mmac=1.0)
    plain = {(c.variant_id, c.split): c for c in candidates_from_series(store.manifest, edge, edge)}
    edge["codec"] = {"encode_ms": [0.5, 1e-3], "decode_ms": [0.1, 1e-4], "settings": {}}
    save_profile(tmp_path / "p.json", edge)  # the codec entry is part of a valid profile
    device = derive_profile(edge, 10.0)
    assert device["codec"]["encode_ms"] == [5.0, 1e-2]
    coded = {(c.variant_id, c.split): c for c in candidates_from_series(store.manifest, device, edge)}
    base = store.get("vgg11-base")
    for split in ("input", "pool2"):
        elements = base.splits[split].elements
        assert coded[("vgg11-base", split)].head_ms == pytest.approx(
            10 * plain[("vgg11-base", split)].head_ms + codec_ms(device, "encode_ms", elements))
        assert coded[("vgg11-base", split)].tail_ms == pytest.approx(
            plain[("vgg11-base", split)].tail_ms + 0.1 + 1e-4 * elements)
    assert coded[("vgg11-base", "output")].head_ms == pytest.approx(
        10 * plain[("vgg11-base", "output")].head_ms)  # nothing sent, nothing encoded
    raw = [c for c in baseline_candidates(store.manifest, device, edge) if c.strategy == "raw-input"]
    assert all(c.head_ms == 0 for c in raw)  # raw pixels need no encoding
    edge["codec"]["encode_ms"] = [1.0]
    with pytest.raises(ValueError, match="codec"):
        save_profile(tmp_path / "bad.json", edge)


def test_a_profile_of_unfolded_models_is_loaded_with_a_warning(measured, tmp_path):
    import warnings

    doc = _doc(measured)
    save_profile(tmp_path / "new.json", doc)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_profile(tmp_path / "new.json") == doc  # written now: no warning
    old = {k: v for k, v in doc.items() if k != "model_form"}
    save_profile(tmp_path / "old.json", old)
    with pytest.warns(UserWarning, match="rerun `twostep profile`"):
        assert load_profile(tmp_path / "old.json") == old
