"""`DeviceHead`: the device half of split inference as a Serve deployment.

One deployment serves every variant of the series: the variant is the request's multiplexed
model id, loaded on first use and cached (`@serve.multiplexed`, least recently used evicted),
so requests for a variant go to replicas that already hold it. It receives uint8 pixels as
bytes and returns the encoded frame as bytes (or the logits at split `output`); bad input
comes back as an error entry rather than an exception, so the replica never logs a crash for
a client's mistake.
"""

import asyncio
import time

import numpy as np
import torch
from ray import serve

from pipeline.runtime import DEFAULT_RUNTIME
from pipeline.series import SeriesError
from serve.replica import MAX_MODELS_PER_REPLICA, error_entry, load_runner, replica_health
from serve.runner import MAX_BATCH, RequestError, VariantRunner
from serve.series_source import SeriesMirror


@serve.deployment(name="DeviceHead")
class DeviceHead:
    """Runs a variant's head on uint8 pixels and encodes its output as a wire frame."""

    def __init__(self, series: dict, torch_threads: int = 1, max_batch: int = MAX_BATCH,
                 runtime: str = DEFAULT_RUNTIME):
        torch.set_num_threads(torch_threads)
        self.runtime, self.threads = runtime, torch_threads
        self.series = SeriesMirror(series)  # reference from serve.series_source.publish_series
        self.faults: dict[str, str] = {}
        self.max_batch = max_batch

    @serve.multiplexed(max_num_models_per_replica=MAX_MODELS_PER_REPLICA)
    async def get_runner(self, variant_id: str) -> VariantRunner:
        return await load_runner(self.series, variant_id, self.max_batch, self.faults,
                                 self.runtime, self.threads)

    async def run(self, split: str, pixels: bytes, shape: tuple[int, ...]) -> dict:
        """Head of the request's variant at `split` on `pixels` (uint8, C order, `shape`).

        Returns:
            {"frame": bytes | None, "logits": list | None, "head_ms", "encode_ms", "server_ms"}
            or {"error": message, "status": 4xx}.
        """
        start = time.perf_counter_ns()
        try:
            runner = await self.get_runner(serve.get_multiplexed_model_id())
            if len(shape) != 4 or len(pixels) != int(np.prod(shape)):
                raise RequestError(f"{len(pixels)} bytes of pixels do not fill shape {tuple(shape)}")
            array = np.frombuffer(pixels, np.uint8).reshape(tuple(shape)).copy()
            out = await asyncio.to_thread(runner.run_head, array, split)
        except (RequestError, SeriesError) as err:
            return error_entry(err)
        return {
            "frame": out.frame,
            "logits": None if out.logits is None else out.logits.tolist(),
            "head_ms": out.head_ms,
            "encode_ms": out.encode_ms,
            "server_ms": (time.perf_counter_ns() - start) / 1e6,
        }

    def health(self) -> dict:
        """Where this replica reads the series, what it fetched, and variants it refused."""
        return replica_health(self.series, self.faults)
