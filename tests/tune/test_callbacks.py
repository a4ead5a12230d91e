"""The driver-side Tune callbacks, driven by hand (no Ray session)."""

import contextlib
import io
from types import SimpleNamespace

from pipeline.models.registry import build
from tune.callbacks import LiveTable, SeriesCollector, format_trial_table
from tune.collect import VariantSink, write_trial_checkpoint


class _Checkpoint:
    """Stands in for `ray.tune.Checkpoint` (only `as_directory` is used)."""

    def __init__(self, path):
        self.path = path

    @contextlib.contextmanager
    def as_directory(self):
        yield self.path


def _trial(key):
    return SimpleNamespace(config={"job": {"key": key}})


def _jobs():
    return [
        {"kind": "step1", "key": "step1", "start": {"iteration": 0}},
        {"kind": "step2", "key": "step2-conv2_1", "offered": ["conv2_1", "pool2"],
         "start": {"iteration": 1}},
    ]


def test_collector_adds_checkpoints_and_keeps_errors(tmp_path, store, spec, make_entry):
    collector = SeriesCollector({"step1": VariantSink(store, 1, None, 1)})
    trial = _trial("step1")
    smaller = spec.with_widths({"conv1_1": 3})
    write_trial_checkpoint(tmp_path / "i1", build(smaller), smaller, make_entry(smaller, 1, 1))
    write_trial_checkpoint(tmp_path / "i3", build(smaller), smaller, make_entry(smaller, 1, 3))
    collector.on_trial_result(0, [], trial, {"iteration": 1})
    collector.on_checkpoint(0, [], trial, _Checkpoint(tmp_path / "i1"))
    assert store.ids() == ["vgg11-base", "vgg11-s1-i1"] and not collector.errors
    collector.on_checkpoint(0, [], trial, _Checkpoint(tmp_path / "i3"))  # a hole: refused
    assert "skips iteration 2" in collector.errors["step1"]
    collector.on_trial_recover(0, [], trial)
    assert collector.failures["step1"] == 1 and collector.iterations["step1"] == [1]
    assert store.ids() == ["vgg11-base", "vgg11-s1-i1"]


def test_live_table_shows_split_iteration_accuracy_and_bytes():
    stream = io.StringIO()
    table = LiveTable(_jobs(), {"step1": 40, "step2-conv2_1": 6}, stream=stream, interval_s=0)
    table.on_trial_start(0, [], _trial("step2-conv2_1"))
    table.on_trial_result(0, [], _trial("step2-conv2_1"), {
        "iteration": 2, "val_accuracy": 0.8765, "test_accuracy": 0.87, "bytes_sent": 1234.4,
        "mac_reduction": 3.5})
    table.on_trial_recover(0, [], _trial("step2-conv2_1"))
    table.on_trial_complete(0, [], _trial("step1"))
    last = stream.getvalue().strip().split("\n\n")[-1].splitlines()
    assert last[0].split() == ["trial", "split", "iter", "val", "acc", "test", "acc", "bytes",
                               "MACs", "status"]
    assert last[1].split() == ["step1", "(all)", "0/40", "-", "-", "-", "-", "DONE"]
    assert last[2].split() == ["step2-conv2_1", "conv2_1/pool2", "2/6", "0.8765", "0.8700",
                               "1234", "3.50x", "RESTARTING", "(1", "restarts)"]


def test_live_table_can_be_silent():
    stream = io.StringIO()
    table = LiveTable(_jobs(), {"step1": 40, "step2-conv2_1": 6}, stream=stream, enabled=False)
    table.on_trial_complete(0, [], _trial("step1"))
    assert stream.getvalue() == ""
    assert "PENDING" in format_trial_table(table.rows)


def test_format_trial_table_aligns_columns():
    rows = {"a": {"split": "x", "iteration": 1, "total": 2, "status": "RUNNING", "restarts": 0}}
    header, line = format_trial_table(rows).splitlines()
    assert header.index("split") == line.index("x")
