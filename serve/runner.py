"""One loaded variant of a series, run as a device head or an edge tail (no Ray here).

The head takes uint8 pixels, normalises them with the series' `DataInfo`, runs the stages up to
the split and encodes the feature map as a wire frame tagged with the variant; at split `output`
it returns the logits instead (nothing is sent). The tail validates a frame (variant tag, shape of
the split, batch bound) before decoding it and runs the remaining stages. `DeviceHead` and
`EdgeTail` are thin Serve wrappers around these two calls.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.clock import ms_since
from pipeline.codec import CodecConfig, codec_config, decode_frame, encode_frame, variant_tag
from pipeline.data import DataInfo, normalize
from pipeline.models.inference import inference_form
from pipeline.models.registry import ArchSpec
from pipeline.onnx_graphs import head_graph, tail_graph
from pipeline.onnx_session import GraphRunner, normalizer
from pipeline.runtime import DEFAULT_RUNTIME
from pipeline.runtime import check_runtime as check_choice
from pipeline.series import SeriesStore
from pipeline.session_codec import route_for
from pipeline.session_wire import Route
from pipeline.split import check_split, split_model, split_shape

MAX_BATCH = 64


class RequestError(ValueError):
    """Bad input for a head or a tail: the caller answers it with a 4xx."""


@dataclass(frozen=True)
class HeadOutput:
    """A frame to send (None at split `output`), or the logits (N, classes) at split `output`."""

    frame: bytes | None
    logits: np.ndarray | None
    head_ms: float
    encode_ms: float


@dataclass(frozen=True)
class TailOutput:
    """The logits (N, classes) the tail computed from a frame."""

    logits: np.ndarray
    decode_ms: float
    tail_ms: float



Call = Callable[[np.ndarray], np.ndarray]


def check_runtime(runtime: str, threads: int) -> None:
    check_choice(runtime)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")


class VariantRunner:
    """A variant's model, split on demand at any split point, run by PyTorch (eager, the folded
    model's halves) or by ONNX Runtime (the exported graphs of `pipeline.onnx_graphs`, read from
    the series when `twostep export` recorded them, else exported from the model here)."""

    def __init__(self, variant_id: str, model: torch.nn.Module, spec: ArchSpec, info: DataInfo,
                 codec: CodecConfig, max_batch: int = MAX_BATCH, runtime: str = DEFAULT_RUNTIME,
                 threads: int = 1, graphs: Callable[[str, str], bytes | None] | None = None):
        check_runtime(runtime, threads)
        self.variant_id = variant_id
        self.model = inference_form(model)
        self.spec = spec
        self.info = info
        self.codec = codec
        self.tag = variant_tag(variant_id)
        self.max_batch = max_batch
        self.runtime = runtime
        self.threads = threads
        self._graphs = graphs or (lambda split, part: None)
        self._calls: dict[str, tuple[Call, Call]] = {}

    @classmethod
    def load(cls, store: SeriesStore, variant_id: str, max_batch: int = MAX_BATCH,
             runtime: str = DEFAULT_RUNTIME, threads: int = 1) -> VariantRunner:
        """Load `variant_id` from `store` (sha256-checked, no pickle)."""
        model, spec, _ = store.load_model(variant_id)
        info = DataInfo.from_dict(store.manifest.data)
        return cls(variant_id, model, spec, info, codec_config(store.manifest.codec), max_batch,
                   runtime, threads, lambda split, part: store.graph_bytes(variant_id, split, part))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.spec.in_channels, self.spec.input_size, self.spec.input_size)

    def _check_split(self, split: str) -> None:
        try:
            check_split(self.spec, split)
        except ValueError as err:
            raise RequestError(str(err)) from None

    def halves(self, split: str) -> tuple[torch.nn.Module, torch.nn.Module]:
        """The folded model's PyTorch (head, tail) at `split`."""
        self._check_split(split)
        return split_model(self.model, split)

    def calls(self, split: str) -> tuple[Call, Call]:
        """(head, tail) at `split` in this runner's runtime: uint8 pixels -> float32 features,
        float32 features -> float32 logits (numpy in, numpy out)."""
        if split not in self._calls:
            if self.runtime == "torch":
                head, tail = self.halves(split)
                self._calls[split] = (self._torch_head(head), self._torch_call(tail))
            else:
                self._check_split(split)
                self._calls[split] = (self._onnx_head(split), self._onnx_tail(split))
        return self._calls[split]

    def _torch_head(self, head: torch.nn.Module) -> Call:
        def call(pixels: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return head(normalize(torch.from_numpy(np.ascontiguousarray(pixels)), self.info)).numpy()
        return call

    @staticmethod
    def _torch_call(module: torch.nn.Module) -> Call:
        def call(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(torch.from_numpy(x)).numpy()
        return call

    def _onnx_head(self, split: str) -> Call:
        if split == "input":  # nothing runs before the split: the normalised pixels
            return normalizer(self.info.mean, self.info.std)
        graph = self._graphs(split, "head") or head_graph(self.model, self.input_shape, self.info, split)
        return GraphRunner(graph, self.threads)

    def _onnx_tail(self, split: str) -> Call:
        if split == "output":
            return lambda x: x
        graph = self._graphs(split, "tail") or tail_graph(self.model, self.input_shape, split)
        return GraphRunner(graph, self.threads)

    def check_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, C, S, S) with 1 <= N <= max_batch, or RequestError."""
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8:
            raise RequestError("pixels must be a uint8 array")
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != self.input_shape:
            raise RequestError(
                f"pixels must have shape (N, {', '.join(map(str, self.input_shape))}), "
                f"got {tuple(pixels.shape)}"
            )
        if not 1 <= pixels.shape[0] <= self.max_batch:
            raise RequestError(f"batch of {pixels.shape[0]} images; allowed 1..{self.max_batch}")
        return pixels

    def run_head(self, pixels: np.ndarray, split: str) -> HeadOutput:
        """Normalise and run the head; encode its output unless the split is `output`."""
        pixels = self.check_pixels(pixels)
        head, _ = self.calls(split)
        start = time.perf_counter_ns()
        y = head(pixels)  # (N, C', H', W') at the split, (N, classes) at `output`
        head_ms = ms_since(start)
        if split == "output":
            return HeadOutput(None, y.astype(np.float32, copy=False), head_ms, 0.0)
        start = time.perf_counter_ns()
        frame = encode_frame(y, self.codec, self.tag)
        return HeadOutput(frame, None, head_ms, ms_since(start))

    def run_tail(self, frame: bytes, split: str) -> TailOutput:
        """Validate and decode `frame` (made by this variant's head at `split`), run the tail.

        Raises:
            RequestError: the split is unknown or `output`, or the frame is malformed, comes
                from another variant, or has the wrong shape for the split.
        """
        start = time.perf_counter_ns()
        tensor = self.decode(frame, split)
        decode_ms = ms_since(start)
        start = time.perf_counter_ns()
        logits = self.calls(split)[1](tensor)
        return TailOutput(logits.astype(np.float32, copy=False), decode_ms, ms_since(start))

    def run_tails(self, frames: list[bytes], split: str) -> list[TailOutput | RequestError]:
        """`run_tail` of several frames at `split` with one tail call on their concatenation
        (a bad frame is answered with its error; the others still run)."""
        start = time.perf_counter_ns()
        decoded: list[np.ndarray | RequestError] = []
        for frame in frames:
            try:
                decoded.append(self.decode(frame, split))
            except RequestError as err:
                decoded.append(err)
        good = [d for d in decoded if isinstance(d, np.ndarray)]
        decode_ms = ms_since(start) / max(len(frames), 1)
        out: list[TailOutput | RequestError] = []
        if good:
            start = time.perf_counter_ns()
            logits = self.calls(split)[1](np.concatenate(good))
            rows = sum(len(d) for d in good)
            tail_ms = ms_since(start) / rows  # per image: each frame is charged its own share
            offsets = np.cumsum([0] + [len(d) for d in good])
            parts = iter(logits[a:b].astype(np.float32) for a, b in zip(offsets, offsets[1:], strict=False))
        for d in decoded:
            out.append(d if isinstance(d, RequestError)
                       else TailOutput(next(parts), decode_ms, tail_ms * len(d)))
        return out

    def session_route(self, route_id: int, split: str) -> Route:
        """What a device session fixes for this variant's frames at `split` (batch 1): the
        split's shape and the series' codec (RequestError for `output` or an unknown split)."""
        if split == "output":
            raise RequestError("split 'output' runs everything on the device: nothing to send")
        self.calls(split)  # checks the split, builds the tail once
        return route_for(route_id, self.variant_id, split, (1, *split_shape(self.spec, split)),
                         self.codec)

    def decode(self, frame: bytes, split: str) -> np.ndarray:
        """The validated tensor (N, C, H, W) of a frame at `split` of this variant."""
        if split == "output":
            raise RequestError("split 'output' runs everything on the device: no tail to run")
        self.calls(split)
        shape = split_shape(self.spec, split)
        try:
            decoded = decode_frame(frame, max_elements=self.max_batch * math.prod(shape),
                                   expected_tag=self.tag)
        except ValueError as err:  # FrameError and its subclasses
            raise RequestError(f"bad frame: {err}") from None
        tensor = decoded.tensor
        if tensor.ndim != len(shape) + 1 or tuple(tensor.shape[1:]) != tuple(shape):
            raise RequestError(
                f"frame holds shape {tuple(tensor.shape)}, split {split!r} of {self.variant_id} "
                f"needs (N, {', '.join(map(str, shape))})"
            )
        if not 1 <= tensor.shape[0] <= self.max_batch:
            raise RequestError(f"frame holds a batch of {tensor.shape[0]}; allowed 1..{self.max_batch}")
        return tensor
