"""The heads a Router hands to devices (`GET /v1/variants/{id}/head`): safetensors weights or
an ONNX graph from pixels to features, packed once and kept for the next device."""

import asyncio
import hashlib
from collections import OrderedDict

from pipeline.data import DataInfo
from pipeline.onnx_graphs import head_graph
from serve.series_source import SeriesMirror
from serve.weights import pack_head

HEAD_CACHE = 32


class HeadShop:
    """Packed heads by (variant, split, format), the most recent `HEAD_CACHE` kept."""

    def __init__(self, series: SeriesMirror, info: DataInfo):
        self.series, self.info = series, info
        self._heads: OrderedDict[tuple[str, str, str], tuple[bytes, str]] = OrderedDict()

    async def get(self, vid: str, split: str, fmt: str) -> tuple[bytes, str]:
        """(the head's bytes, their sha256); packed in a thread the first time."""
        key = (vid, split, fmt)
        if key not in self._heads:
            self._heads[key] = await asyncio.to_thread(self._pack, vid, split, fmt)
            while len(self._heads) > HEAD_CACHE:
                self._heads.popitem(last=False)
        self._heads.move_to_end(key)
        return self._heads[key]

    def _pack(self, vid: str, split: str, fmt: str) -> tuple[bytes, str]:
        if fmt == "onnx":
            graph = self.series.graph_bytes(vid, split, "head")
            if graph is None:
                model, spec, _ = self.series.load_model(vid)
                graph = head_graph(model, (spec.in_channels, spec.input_size, spec.input_size),
                                   self.info, split)
            return graph, hashlib.sha256(graph).hexdigest()
        model, spec, _ = self.series.load_model(vid)
        return pack_head(model, spec, vid, split)
