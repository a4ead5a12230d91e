"""Small datasets in real on-disk formats, written by tests and benchmarks (nothing downloads)."""

import gzip

import numpy as np


def write_idx(path, array: np.ndarray, compress: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_fashion_like(directory, n_train: int = 50, n_test: int = 20, seed: int = 0,
                       learnable: bool = False) -> None:
    """Fashion-MNIST-format IDX files; `learnable` draws each class as a bright block in its own
    cell of a 4x3 grid, which a tiny CNN learns in a few epochs."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28))
        if learnable:
            for i, label in enumerate(labels):
                row, col = divmod(int(label), 4)
                images[i, 9 * row + 1: 9 * row + 8, 7 * col: 7 * col + 6] = 250
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
