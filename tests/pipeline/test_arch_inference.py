"""ResNet-18 and MobileNetV2 in the serving forms: BatchNorm folded (same function), and ONNX heads
and tails that ONNX Runtime runs to PyTorch's results."""

import numpy as np
import pytest
import torch
from modelutil import randomise_batchnorm

from pipeline.data import DataInfo
from pipeline.models import build, make_spec
from pipeline.models.inference import inference_form
from pipeline.onnx_export import check_graphs
from pipeline.onnx_graphs import head_graph, tail_graph
from pipeline.split import split_points

INFO = DataInfo("synthetic", 1, 10, 32, (0.3,), (0.3,), tuple(f"c{i}" for i in range(10)))
PIXELS = np.random.default_rng(2).integers(0, 256, (4, 1, 32, 32), dtype=np.uint8)


def _trained_looking(arch: str, width: float):
    torch.manual_seed(0)
    spec = make_spec(arch, width, in_channels=1)
    return randomise_batchnorm(build(spec)).eval(), spec


@pytest.mark.parametrize("arch,width", [("resnet18", 0.125), ("mobilenetv2", 0.25)])
def test_folding_keeps_the_function_and_removes_every_batchnorm(arch, width):
    model, _ = _trained_looking(arch, width)
    folded = inference_form(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-4)


@pytest.mark.parametrize("arch,width,split", [("resnet18", 0.125, "layer2_1"),
                                              ("mobilenetv2", 0.25, "block6"),
                                              ("mobilenetv2", 0.25, "pool")])
def test_onnx_head_and_tail_match_pytorch(arch, width, split):
    model, spec = _trained_looking(arch, width)
    assert split in split_points(spec)
    shape = (1, 32, 32)
    head, tail = head_graph(model, shape, INFO, split), tail_graph(model, shape, split)
    checked = check_graphs(model, INFO, split, head, tail, PIXELS)
    assert checked["max_abs_diff"] < 1e-3 and checked["images"] == len(PIXELS)
