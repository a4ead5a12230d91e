"""Real test images of the dataset a series was pruned on (for checks and benchmarks)."""

from __future__ import annotations

import numpy as np

from pipeline.series import Manifest


def series_test_images(manifest: Manifest, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` images (uint8 N,C,S,S) and labels of the series' test split."""
    from pipeline.data import load_splits

    config = manifest.config
    if "dataset" not in config or "data_dir" not in config:
        raise ValueError("the series manifest does not say which dataset it was pruned on")
    splits = load_splits(config["dataset"], config["data_dir"], config.get("val_fraction", 0.1),
                         seed=config.get("seed", 0))
    n = min(count, len(splits.test))
    return splits.test.images[:n].numpy(), splits.test.labels[:n].numpy()
