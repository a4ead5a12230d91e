"""A small random-init series built in well under a second, for the Ray-free serving tests."""

import pytest
import torch

from pipeline.codec import CodecConfig
from pipeline.data import DataInfo, normalize
from pipeline.models import make_spec
from pipeline.models.registry import build
from pipeline.series import SeriesStore, variant_id
from pipeline.split import split_points, total_macs
from pipeline.split_bytes import measure_split_bytes
from pipeline.surgery import remove_filters

INFO = DataInfo("synthetic", 1, 10, 32, (0.2,), (0.3,), tuple(f"c{i}" for i in range(10)))


def _entry(model, spec, step, iteration, offered, accuracy, layer=None):
    vid = variant_id(spec.arch, step, iteration, layer)
    images = normalize(torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8), INFO)
    return {
        "id": vid, "step": step, "layer": layer, "split": offered[0] if step == 2 else None,
        "iteration": iteration, "val_accuracy": accuracy, "test_accuracy": accuracy,
        "macs": total_macs(spec),
        "splits": measure_split_bytes(model, spec, images, offered, CodecConfig(), vid),
    }


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> SeriesStore:
    """`vgg11-base` (all splits, accuracy 0.9) and the step-2 variant `vgg11-s2-conv5_2-i1` with
    conv5_2 cut to 2 filters (splits conv5_2 and pool5, accuracy 0.85); random weights."""
    torch.manual_seed(0)
    spec = make_spec("vgg11", 0.0625, in_channels=1)
    model = build(spec).eval()
    store = SeriesStore.create(tmp_path_factory.mktemp("tiny") / "series", spec, INFO.to_dict(),
                               {"bits": 8, "per_channel": False, "compress": True})
    base = store.add_variant(model, spec, _entry(model, spec, 0, 0, split_points(spec), 0.9))
    store.set_field("base", base.id)
    pruned, pruned_spec = remove_filters(model, spec, {"conv5_2": list(range(2, 32))})
    pruned.eval()
    store.add_variant(pruned, pruned_spec,
                      _entry(pruned, pruned_spec, 2, 1, ["conv5_2", "pool5"], 0.85, "conv5_2"))
    return store
