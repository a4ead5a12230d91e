"""Pictures of a series and of a latency benchmark (PNG, matplotlib's Agg backend, no screen)."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.report import series_rows


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_split_sizes(manifest: dict, path: str | os.PathLike, max_loss: float = 0.01) -> Path:
    """The paper's bar chart: bytes sent at each split for original (float32 and coded),
    step-1 and step-2 models (log scale)."""
    plt = _pyplot()
    rows = series_rows(manifest, max_loss)
    names = [r["split"] for r in rows]
    bars = [
        ("original, float32", [r["orig_float32_bytes"] for r in rows]),
        ("original, 8-bit + lz4", [r["orig_bytes"] for r in rows]),
        ("step 1, 8-bit + lz4", [r.get("s1_bytes", 0) for r in rows]),
        ("step 2, 8-bit + lz4", [r.get("s2_bytes", 0) for r in rows]),
    ]
    fig, ax = plt.subplots(figsize=(max(8, 0.55 * len(names)), 4.5))
    width = 0.8 / len(bars)
    for i, (label, values) in enumerate(bars):
        ax.bar([x + (i - 1.5) * width for x in range(len(names))], values, width, label=label)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, rotation=60)
    ax.set_ylabel("bytes sent per image (whole frame)")
    ax.set_title(f"Bytes at each split point (step 2: fewest bytes within {100 * max_loss:.1f} pt)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_accuracy_vs_bytes(manifest: dict, path: str | os.PathLike) -> Path:
    """Every (variant, split) of the series: accuracy against bytes sent."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for step, label, marker in ((0, "original", "s"), (1, "step 1", "^"), (2, "step 2", "o")):
        points = [(m["bytes_mean"], v["test_accuracy"]) for v in manifest["variants"]
                  if v["step"] == step for s, m in v["splits"].items() if s != "output"]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.scatter(xs, ys, label=label, marker=marker, s=18, alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("bytes sent per image (mean, whole frame)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy vs. bytes sent, every variant and split")
    ax.legend()
    return _save(fig, path)


def plot_latency_vs_bandwidth(
    results: dict[str, list[tuple[float, float]]], path: str | os.PathLike, title: str = "",
) -> Path:
    """One line per strategy: end-to-end latency (ms) against bandwidth (bit/s)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy, points in results.items():
        points = sorted(points)
        ax.plot([p[0] / 1e6 for p in points], [p[1] for p in points], marker="o", label=strategy)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("bandwidth (Mbit/s)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_title(title or "Latency vs. bandwidth")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    fig.clf()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
