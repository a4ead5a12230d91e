"""ONNX graphs of a variant's head and tail at a split point (run them with `pipeline.onnx_session`).

- head graph: input `pixels` uint8 (N, C, S, S) -> normalisation with the series' mean and std ->
  the stages up to the split -> `features` float32, the tensor the device encodes as a frame (at
  split `output`: the logits). Normalisation is in the graph, so a device needs no torch.
- tail graph: input `features` float32, the decoded frame -> the remaining stages -> `logits`.

Both are exported from the inference form (BatchNorm folded), with a dynamic batch dimension,
opset 18, by PyTorch's TorchScript-based exporter (it needs no onnxscript and gives the same
bytes for the same weights). No Ray here.
"""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

from pipeline.data import DataInfo
from pipeline.models.inference import inference_form
from pipeline.split import split_model

OPSET = 18
HEAD_INPUT, HEAD_OUTPUT = "pixels", "features"
TAIL_INPUT, TAIL_OUTPUT = "features", "logits"


class _PixelsHead(nn.Module):
    """uint8 pixels -> normalised input -> `head`: the device's whole computation before encoding."""

    def __init__(self, head: nn.Module, info: DataInfo):
        super().__init__()
        self.head = head
        self.register_buffer("mean", torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head((pixels.float() / 255.0 - self.mean) / self.std)


def _export(module: nn.Module, example: torch.Tensor, input_name: str, output_name: str) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the exporter's deprecation notices, once per graph
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), buffer, dynamo=False, opset_version=OPSET,
                          input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}})
    return buffer.getvalue()


def head_graph(model: nn.Module, input_shape: tuple[int, int, int], info: DataInfo, split: str) -> bytes:
    """The ONNX head of `model` at `split` (any split but `input`), pixels to features."""
    if split == "input":
        raise ValueError("split 'input' has no head: the device sends the pixels themselves")
    head, _ = split_model(inference_form(model), split)
    example = torch.zeros((1, *input_shape), dtype=torch.uint8)
    return _export(_PixelsHead(head, info), example, HEAD_INPUT, HEAD_OUTPUT)


def tail_graph(model: nn.Module, input_shape: tuple[int, int, int], split: str) -> bytes:
    """The ONNX tail of `model` at `split` (any split but `output`), features to logits."""
    if split == "output":
        raise ValueError("split 'output' has no tail: everything runs on the device")
    folded = inference_form(model)
    head, tail = split_model(folded, split)
    with torch.inference_mode():
        example = head(torch.zeros((1, *input_shape)))
    return _export(tail, example.clone(), TAIL_INPUT, TAIL_OUTPUT)
