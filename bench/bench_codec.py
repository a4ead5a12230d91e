"""Benchmark the feature codec on ReLU-like feature maps: bytes on the wire, lz4 speed, latency.

Run `python bench/bench_codec.py [--repeats N]`. It prints one row per (shape, config): frame
size against raw float32, lz4 block compress/decompress throughput on the packed values, and
median encode/decode time. `measure_codec` is the reusable part (e.g. for real model feature
maps); the synthetic tensors here are sparse and non-negative like post-ReLU activations.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import lz4.block
import numpy as np

from pipeline.codec import HEADER_BYTES, CodecConfig, decode_frame, encode_frame

# VGG-16 on 32x32 split points (conv1, pool2, pool3, pool4, pool5), a pruned pool5, logits.
SHAPES = [
    (1, 64, 32, 32),
    (1, 128, 8, 8),
    (1, 256, 4, 4),
    (1, 512, 2, 2),
    (1, 512, 1, 1),
    (1, 21, 1, 1),
    (1, 10),
]
CONFIGS = {
    "8-bit": CodecConfig(bits=8),
    "4-bit": CodecConfig(bits=4),
    "8-bit/ch": CodecConfig(bits=8, per_channel=True),
    "float32": CodecConfig(bits=32),
}


def relu_feature_map(shape: tuple[int, ...], zero_fraction: float = 0.6, seed: int = 0):
    """A float32 tensor with about `zero_fraction` zeros and half-normal positive values."""
    rng = np.random.default_rng(seed)
    pre = rng.standard_normal(shape) - np.sqrt(2) * _erfinv(2 * zero_fraction - 1)
    return np.maximum(pre, 0.0).astype(np.float32)


def _erfinv(y: float) -> float:
    # Winitzki's approximation; plenty for picking a ReLU threshold.
    a = 0.147
    ln = np.log(1 - y * y)
    t = 2 / (np.pi * a) + ln / 2
    return float(np.sign(y) * np.sqrt(np.sqrt(t * t - ln / a) - t))


def _median_s(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_codec(tensor: np.ndarray, config: CodecConfig, repeats: int = 20) -> dict:
    """Measure one tensor under one codec config.

    Args:
        tensor: the feature map (numpy or torch), batch dimension first.
        config: the codec settings.
        repeats: timed runs per measurement; medians are reported.

    Returns:
        A dict with `elements`, `raw_bytes` (float32), `packed_bytes` (quantised, before lz4),
        `frame_bytes`, `ratio` (raw/frame), `lz4_compress_mb_s`, `lz4_decompress_mb_s`
        (megabytes of packed input per second; 0 for empty input), `encode_ms`, `decode_ms`.
    """
    tensor = np.asarray(tensor, np.float32)
    frame = encode_frame(tensor, config)
    plain = encode_frame(tensor, CodecConfig(config.bits, config.per_channel, compress=False))
    params = 8 * tensor.shape[1] if config.per_channel else 0
    packed = plain[HEADER_BYTES + params :]
    compressed = lz4.block.compress(packed, store_size=False)
    compress_s = _median_s(lambda: lz4.block.compress(packed, store_size=False), repeats)
    decompress_s = _median_s(lambda: lz4.block.decompress(compressed, uncompressed_size=len(packed)), repeats)
    return {
        "elements": tensor.size,
        "raw_bytes": tensor.size * 4,
        "packed_bytes": len(packed),
        "frame_bytes": len(frame),
        "ratio": tensor.size * 4 / len(frame),
        "lz4_compress_mb_s": len(packed) / compress_s / 1e6 if packed else 0.0,
        "lz4_decompress_mb_s": len(packed) / decompress_s / 1e6 if packed else 0.0,
        "encode_ms": _median_s(lambda: encode_frame(tensor, config), repeats) * 1e3,
        "decode_ms": _median_s(lambda: decode_frame(frame), repeats) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--zero-fraction", type=float, default=0.6)
    args = parser.parse_args()
    print(
        f"{'shape':>16} {'config':>9} {'raw B':>8} {'frame B':>8} {'ratio':>6} "
        f"{'lz4 MB/s':>9} {'unlz4 MB/s':>10} {'enc ms':>7} {'dec ms':>7}"
    )
    for shape in SHAPES:
        x = relu_feature_map(shape, args.zero_fraction)
        for name, config in CONFIGS.items():
            if config.per_channel and len(shape) < 4:
                continue
            m = measure_codec(x, config, args.repeats)
            print(
                f"{str(shape):>16} {name:>9} {m['raw_bytes']:>8} {m['frame_bytes']:>8} "
                f"{m['ratio']:>6.2f} {m['lz4_compress_mb_s']:>9.0f} "
                f"{m['lz4_decompress_mb_s']:>10.0f} {m['encode_ms']:>7.3f} {m['decode_ms']:>7.3f}"
            )


if __name__ == "__main__":
    main()
