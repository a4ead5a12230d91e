import pickle

import numpy as np
import pytest
import torch
from datafiles import write_idx
from PIL import Image

from pipeline.data import (
    DatasetError,
    augment,
    iterate_batches,
    load_splits,
    read_idx,
)


def test_fashion_mnist_from_idx_files(fashion_dir):
    splits = load_splits("fashion-mnist", fashion_dir, val_fraction=0.2, seed=1)
    assert len(splits.train) == 40 and len(splits.val) == 10 and len(splits.test) == 20
    assert splits.train.images.shape[1:] == (1, 32, 32)
    assert splits.train.images.dtype == torch.uint8
    # 28x28 images are zero padded by 2 on each side
    assert splits.test.images[:, :, :2].sum() == 0 and splits.test.images[:, :, -2:].sum() == 0
    raw = read_idx(fashion_dir / "t10k-images-idx3-ubyte.gz")
    assert torch.equal(splits.test.images[:, 0, 2:30, 2:30], torch.from_numpy(raw.copy()))
    assert splits.info.in_channels == 1 and splits.info.num_classes == 10


def test_splits_and_subsets_are_deterministic(fashion_dir):
    a = load_splits("fashion-mnist", fashion_dir, 0.2, train_subset=15, test_subset=5, seed=3)
    b = load_splits("fashion-mnist", fashion_dir, 0.2, train_subset=15, test_subset=5, seed=3)
    c = load_splits("fashion-mnist", fashion_dir, 0.2, train_subset=15, test_subset=5, seed=4)
    assert len(a.train) == 15 and len(a.test) == 5
    assert torch.equal(a.train.labels, b.train.labels) and torch.equal(a.val.images, b.val.images)
    assert not torch.equal(a.val.images, c.val.images)


def test_plain_idx_and_corrupt_idx(tmp_path):
    write_idx(tmp_path / "x", np.arange(24).reshape(2, 3, 4), compress=False)
    assert read_idx(tmp_path / "x").shape == (2, 3, 4)
    (tmp_path / "bad").write_bytes(bytes([0, 0, 8, 3]) + (100).to_bytes(4, "big") * 3 + b"xx")
    with pytest.raises(DatasetError, match="header says shape"):
        read_idx(tmp_path / "bad")
    (tmp_path / "magic").write_bytes(b"\x1f\x00\x08\x01\x00\x00\x00\x01a")
    with pytest.raises(DatasetError, match="bad magic"):
        read_idx(tmp_path / "magic")


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_splits("fashion-mnist", tmp_path)
    with pytest.raises(DatasetError, match="CIFAR-10 not found"):
        load_splits("cifar10", tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset 'mnist2'"):
        load_splits("mnist2", tmp_path)


def write_cifar_python(root, n_per_batch=4):
    """The layout torchvision's CIFAR10 writes: pickled dicts with a uint8 data array."""
    d = root / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n_per_batch).tolist()}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return d


def test_cifar10_python_format(tmp_path):
    d = write_cifar_python(tmp_path)
    splits = load_splits("cifar10", tmp_path, val_fraction=0.0)
    assert len(splits.train) == 20 and len(splits.test) == 4
    assert splits.train.images.shape[1:] == (3, 32, 32)
    with open(d / "test_batch", "rb") as f:
        raw = pickle.load(f)
    assert torch.equal(splits.test.images.reshape(4, -1), torch.from_numpy(raw[b"data"]))


def test_cifar10_refuses_pickles_that_call_code(tmp_path):
    d = write_cifar_python(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(DatasetError, match="refusing to load"):
        load_splits("cifar10", tmp_path)


def test_cifar10_binary_format(tmp_path):
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        records = rng.integers(0, 256, (3, 3073), dtype=np.uint8)
        records[:, 0] %= 10
        records.tofile(d / name)
    splits = load_splits("cifar10", tmp_path, val_fraction=0.0)
    assert len(splits.train) == 15 and splits.test.labels.max() < 10


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
                    tmp_path / split / cls / f"{i}.png")
    splits = load_splits("folder", tmp_path, val_fraction=0.0, input_size=32, channels=3)
    assert splits.train.images.shape == (6, 3, 32, 32)
    assert splits.info.classes == ("cat", "dog") and splits.info.num_classes == 2
    assert sorted(splits.test.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="cannot read image"):
        load_splits("folder", tmp_path)


def test_augmentation_keeps_shape_and_pixels(fashion_dir):
    splits = load_splits("fashion-mnist", fashion_dir, 0.0)
    images = splits.train.images[:8]
    out = augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert not torch.equal(out, images)
    batches = list(iterate_batches(splits.train, splits.info, 16))
    assert sum(len(y) for _, y in batches) == 50 and batches[0][0].dtype == torch.float32
