"""`EdgeTail`: the edge half of split inference as a Serve deployment (the one that scales).

Like `DeviceHead`, one deployment holds any variant (multiplexed model id, loaded on first use,
cached). It takes a wire frame as bytes, validates it against the variant (tag, the split's
shape, the batch bound) before decoding, and finishes the forward pass. It also reports the
frame bytes it is working on (`record_autoscaling_stats`), a signal a custom autoscaling
policy can use instead of the request count.
"""

import asyncio
import time

import torch
from ray import serve

from pipeline.series import SeriesError
from serve.head import MAX_MODELS_PER_REPLICA, error_entry, replica_health
from serve.runner import MAX_BATCH, RequestError, VariantRunner
from serve.series_source import SeriesMirror


@serve.deployment(name="EdgeTail")
class EdgeTail:
    """Decodes a frame from a variant's head and runs the variant's tail."""

    def __init__(self, series: dict, torch_threads: int = 1, max_batch: int = MAX_BATCH):
        torch.set_num_threads(torch_threads)
        self.series = SeriesMirror(series)  # reference from serve.series_source.publish_series
        self.faults: dict[str, str] = {}
        self.max_batch = max_batch
        self.bytes_in_flight = 0

    @serve.multiplexed(max_num_models_per_replica=MAX_MODELS_PER_REPLICA)
    async def get_runner(self, variant_id: str) -> VariantRunner:
        try:
            return await asyncio.to_thread(VariantRunner.load, self.series, variant_id, self.max_batch)
        except SeriesError as err:
            if "unknown variant" not in str(err):
                self.faults[variant_id] = str(err)
            raise

    async def finish(self, frame: bytes, split: str) -> dict:
        """Tail of the request's variant on `frame`, made by its head at `split`.

        Returns:
            {"logits": [[...]], "decode_ms", "tail_ms", "server_ms"} or {"error", "status"}.
        """
        start = time.perf_counter_ns()
        self.bytes_in_flight += len(frame)
        try:
            runner = await self.get_runner(serve.get_multiplexed_model_id())
            out = await asyncio.to_thread(runner.run_tail, frame, split)
        except (RequestError, SeriesError) as err:
            return error_entry(err)
        finally:
            self.bytes_in_flight -= len(frame)
        return {
            "logits": out.logits.tolist(),
            "decode_ms": out.decode_ms,
            "tail_ms": out.tail_ms,
            "server_ms": (time.perf_counter_ns() - start) / 1e6,
        }

    def record_autoscaling_stats(self) -> dict[str, float]:
        return {"bytes_in_flight": float(self.bytes_in_flight)}

    def health(self) -> dict:
        """Where this replica reads the series, what it fetched, and variants it refused."""
        return replica_health(self.series, self.faults)
