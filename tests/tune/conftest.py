"""Tiny in-memory series for the pure tests of `tune/` (no Ray session)."""

import pytest

from pipeline.models.registry import build, make_spec
from pipeline.series import SeriesStore, measured, variant_id
from pipeline.split import total_macs


def _make_entry(spec, step, iteration, layer=None, val_accuracy=0.9, **extra):
    """A manifest entry as `describe_variant` would write it (numbers made up)."""
    return measured({
        "id": variant_id(spec.arch, step, iteration, layer), "step": step, "layer": layer,
        "split": layer if step == 2 else None, "iteration": iteration,
        "val_accuracy": val_accuracy, "test_accuracy": val_accuracy, "macs": total_macs(spec),
        "splits": {}, **extra,
    })


@pytest.fixture
def make_entry():
    return _make_entry


@pytest.fixture
def spec():
    return make_spec("vgg11", 0.0625, in_channels=1)


@pytest.fixture
def store(tmp_path, spec):
    """A series holding only its base variant (val accuracy 0.9)."""
    store = SeriesStore.create(tmp_path / "series", spec, {"dataset": "fashion-mnist"},
                               {"bits": 8}, {})
    entry = store.add_variant(build(spec), spec, _make_entry(spec, 0, 0))
    store.set_field("base", entry.id)
    return store
