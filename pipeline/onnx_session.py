"""ONNX Runtime sessions for exported heads and tails: numpy in, numpy out, no torch.

A device runs its head through this module alone (with numpy and onnxruntime installed), and
the edge's ONNX runtime runs tails through it too.
"""

from __future__ import annotations

import numpy as np


def session(graph: bytes, threads: int = 1, profile_prefix: str | None = None):
    """An ONNX Runtime CPU session for `graph` with every graph optimisation, `threads` threads
    inside an operator and one across operators (batch-1 CNNs run their operators in order);
    with `profile_prefix`, ONNX Runtime's profiler writes its node times there."""
    import onnxruntime as ort

    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def normalizer(mean, std):
    """uint8 pixels (N, C, S, S) -> float32 normalised input, as `pipeline.data.normalize` and
    the head graphs compute it: what a device sends at split `input`, where no head runs."""
    mean = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    return lambda pixels: (pixels.astype(np.float32) / 255.0 - mean) / std


class GraphRunner:
    """One graph in one session: `runner(array) -> array` (its single input and output)."""

    def __init__(self, graph: bytes, threads: int = 1):
        self.session = session(graph, threads)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]
