"""Time per MAC of a series' step-1 models on real ONNX Runtime (tiny widths): the manifest's
`step1_call_times`, `twostep series time` and `series show`, a series made before them, and
resuming a series made before `step1_round_to`."""

import pytest
import torch
from tiny_series import INFO, _entry

from pipeline import call_time
from pipeline.config import PruneConfig
from pipeline.models import build, make_spec
from pipeline.prune_job import open_or_create_store, time_step1_calls
from pipeline.series import SeriesError, SeriesStore
from pipeline.split import split_points
from pipeline.surgery import remove_filters
from twostep.cli import main

OLD_KEYS = ("step1_round_to", "step1_time_calls", "step2_round_to")


def _series(directory, config: dict | None = None) -> SeriesStore:
    """A base VGG-11 (x0.25) and two step-1 variants, random weights; `config` as made."""
    torch.manual_seed(0)
    spec = make_spec("vgg11", 0.25, in_channels=1)
    model = build(spec).eval()
    store = SeriesStore.create(directory, spec, INFO.to_dict(),
                               {"bits": 8, "per_channel": False, "compress": True}, config)
    store.set_field("base", store.add_variant(model, spec, _entry(model, spec, 0, 0, split_points(spec),
                                                                 0.9)).id)
    for iteration, keep in ((1, 24), (2, 8)):
        cut = {g: list(range(keep * w // 32, w)) for g, w in spec.width_of().items()}
        pruned, pruned_spec = remove_filters(model, spec, cut)
        store.add_variant(pruned, pruned_spec, _entry(pruned, pruned_spec, 1, iteration,
                                                      split_points(pruned_spec), 0.88))
    return store


def test_step1_call_times_time_each_step1_model_against_the_base(tmp_path):
    store = _series(tmp_path / "s")
    document = call_time.step1_call_times(store, idle_ms=1.0, repeats=5)
    assert document["runtime"] == "onnxruntime" and document["idle_ms"] == 1.0
    assert document["base"] == "vgg11-base" and document["base_ms"] > 0
    assert list(document["variants"]) == ["vgg11-s1-i1", "vgg11-s1-i2"]
    base_macs = store.get("vgg11-base").macs
    for vid, row in document["variants"].items():
        assert row["mac_reduction"] == pytest.approx(base_macs / store.get(vid).macs)
        assert row["time_reduction"] == pytest.approx(document["base_ms"] / row["ms"])
        assert row["time_per_mac"] == pytest.approx(row["time_reduction"] / row["mac_reduction"])
    assert document["variants"]["vgg11-s1-i2"]["mac_reduction"] > 10  # widths / 4: ~16x


def test_series_time_records_them_and_series_show_reports_them(tmp_path, capsys):
    store = _series(tmp_path / "s")
    assert main(["series", "show", str(store.directory)]) == 0  # a series made before: a hint
    assert "step-1 call times: not measured (`twostep series time DIR`" in capsys.readouterr().out
    assert main(["series", "time", str(store.directory), "--repeats", "3", "--idle-ms", "1",
                 "--no-save"]) == 0
    assert "vgg11-s1-i2" in capsys.readouterr().out
    assert call_time.FIELD not in SeriesStore.open(store.directory).manifest
    assert main(["series", "time", str(store.directory), "--repeats", "3", "--idle-ms", "1",
                 "--variants", "vgg11-s1-i1"]) == 0
    recorded = SeriesStore.open(store.directory).manifest.step1_call_times
    assert list(recorded["variants"]) == ["vgg11-s1-i1"] and recorded["repeats"] == 3
    capsys.readouterr()
    assert main(["series", "show", str(store.directory)]) == 0
    shown = capsys.readouterr().out
    assert "step-1 call times (ONNX Runtime, batch 1, 1 thread, 1 ms idle" in shown
    row = next(line for line in shown.splitlines() if line.strip().startswith("vgg11-s1-i1"))
    assert f"{recorded['variants']['vgg11-s1-i1']['time_per_mac']:.2f}" in row
    assert main(["series", "time", str(store.directory), "--variants", "nope"]) == 2
    assert "unknown variant 'nope'" in capsys.readouterr().err


def test_the_prune_job_times_step1_once(tmp_path):
    store = _series(tmp_path / "s")
    config = PruneConfig(out=str(store.directory))
    assert time_step1_calls(store, config.replace(step1_time_calls=False), log=None) is None
    first = time_step1_calls(store, config, log=None)
    assert sorted(first["variants"]) == ["vgg11-s1-i1", "vgg11-s1-i2"]
    assert SeriesStore.open(store.directory).manifest.step1_call_times == first
    assert time_step1_calls(store, config, log=None) is None  # a resumed run: already there


def test_a_series_made_before_round_to_resumes_as_it_was_made(tmp_path):
    made = PruneConfig(out=str(tmp_path / "s"), step1_round_to=1).model_dump(mode="json")
    store = _series(tmp_path / "s", {k: v for k, v in made.items() if k not in OLD_KEYS})
    spec = make_spec("vgg11", 0.25, in_channels=1)
    config = PruneConfig(out=str(store.directory))
    with pytest.raises(SeriesError, match=r"step1_round_to\).*made with step1_round_to = 1 "
                                          r"\(--step1-round-to 1 resumes it\)"):
        open_or_create_store(config, spec, INFO)  # step 1 unfinished: would mix widths
    assert open_or_create_store(config.replace(step1_round_to=1), spec, INFO).manifest.base
    store.set_field("step1", "vgg11-s1-i2")  # finished: step 1's knobs no longer matter
    assert open_or_create_store(config, spec, INFO).manifest.step1 == "vgg11-s1-i2"
    with pytest.raises(SeriesError, match="step2_round_to"):
        open_or_create_store(config.replace(step2_round_to=8), spec, INFO)
