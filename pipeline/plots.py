"""Pictures of a series and of a latency benchmark (PNG, matplotlib's Agg backend, no screen)."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.report import series_rows
from pipeline.series import Manifest


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_split_sizes(manifest: Manifest, path: str | os.PathLike, max_loss: float = 0.01) -> Path:
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


def plot_accuracy_vs_bytes(manifest: Manifest, path: str | os.PathLike) -> Path:
    """Every (variant, split) of the series: accuracy against bytes sent."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for step, label, marker in ((0, "original", "s"), (1, "step 1", "^"), (2, "step 2", "o")):
        points = [(m.bytes_mean, v.accuracy) for v in manifest.step(step)
                  for s, m in v.splits.items() if s != "output"]
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


def plot_trace(trace, router, oracle, path: str | os.PathLike, fps: float, window_s: float = 300.0) -> Path:
    """One trace replayed: the link's rate and the router's estimate over time (top); the
    router's latency and choice per request, and the oracle's latency (bottom). `router` and
    `oracle` have per-request `starts_s`, `latency_ms`, `labels` (and the router
    `estimates_bps`), as `serve.trace_replay.Outcome`; `trace` is a `pipeline.traces.Trace`.
    Draws the `window_s` with the most changes of choice (a whole commute is too dense)."""
    import numpy as np

    plt = _pyplot()
    changed = [a != b for a, b in zip(router.labels, router.labels[1:], strict=False)]
    changes = np.r_[0, np.cumsum(changed)]
    span = min(len(changes) - 1, int(window_s * fps))
    first = int(np.argmax(changes[span:] - changes[:len(changes) - span])) if span > 0 else 0
    shown = slice(first, first + span + 1)
    t = router.starts_s[shown]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    steps = (trace.starts_s >= t[0] - 5) & (trace.starts_s <= t[-1])
    top.step(trace.starts_s[steps], trace.rates_bps[steps] / 1e6, where="post", color="tab:gray",
             label="link rate (trace)")
    top.plot(t, router.estimates_bps[shown] / 1e6, color="tab:blue", lw=1, label="twostep's estimate")
    top.set_yscale("log")
    top.set_ylabel("Mbit/s")
    top.legend(fontsize=8, loc="upper right")
    chosen = router.labels[shown]
    labels = sorted(set(chosen), key=chosen.count, reverse=True)
    index = {label: i for i, label in enumerate(labels)}
    bottom.plot(t, router.latency_ms[shown], color="tab:blue", lw=0.8, label="twostep latency")
    bottom.plot(t, oracle.latency_ms[shown], color="black", lw=0.8, ls="--", label="oracle latency")
    bottom.set_ylabel("ms per request")
    bottom.set_yscale("log")
    twin = bottom.twinx()
    twin.scatter(t, [index[label] for label in chosen], s=2, color="tab:orange", label="twostep's choice")
    twin.set_yticks(range(len(labels)), [label[-28:] for label in labels], fontsize=6)
    bottom.set_xlabel(f"seconds ({fps:g} requests/s)")
    bottom.legend(fontsize=8, loc="upper left")
    top.set_title(f"{trace.name}: twostep follows the link (mean {np.mean(router.latency_ms):.1f} ms, "
                  f"oracle {np.mean(oracle.latency_ms):.1f} ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
