"""Image datasets held in memory as uint8 tensors: Fashion-MNIST (IDX), CIFAR-10, image folders.

Nothing is downloaded. Splits (train / validation / test) and subsets are deterministic for a
seed. Fashion-MNIST's 28x28 images are zero-padded to 32x32 so the CIFAR-layout VGG applies.
"""

from __future__ import annotations

import gzip
import io
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.catalog import DATASETS, DEFAULT_FASHION_MNIST_DIR

FASHION_MNIST_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MAX_IDX_ELEMENTS = 1 << 31


class DatasetError(ValueError):
    """A dataset that is missing or malformed."""


@dataclass(frozen=True)
class DataInfo:
    """What a model and a server need to know about the inputs."""

    name: str
    in_channels: int
    num_classes: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "name": self.name, "in_channels": self.in_channels, "num_classes": self.num_classes,
            "input_size": self.input_size, "mean": list(self.mean), "std": list(self.std),
            "classes": list(self.classes),
        }

    @classmethod
    def from_dict(cls, d: dict) -> DataInfo:
        return cls(
            d["name"], int(d["in_channels"]), int(d["num_classes"]), int(d["input_size"]),
            tuple(d["mean"]), tuple(d["std"]), tuple(d["classes"]),
        )


@dataclass
class ImageSet:
    """`images`: (N, C, H, W) uint8; `labels`: (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index])


@dataclass
class Splits:
    train: ImageSet
    val: ImageSet
    test: ImageSet
    info: DataInfo


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images scaled to [0, 1] (std floored at 1e-3)."""
    pixels = images.float().div(255)
    mean = tuple(round(m, 4) for m in pixels.mean(dim=(0, 2, 3)).tolist())
    std = tuple(round(max(s, 1e-3), 4) for s in pixels.std(dim=(0, 2, 3)).tolist())
    return mean, std


# ---- Fashion-MNIST (IDX) -------------------------------------------------------------------

def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (optionally gzipped), validating its header."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DatasetError(f"cannot read IDX file {path}: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{path} is not an IDX file (bad magic)")
    if raw[2] != 0x08:
        raise DatasetError(f"{path}: only unsigned-byte IDX files are supported (type {raw[2]:#x})")
    ndim = raw[3]
    if not 1 <= ndim <= 4 or len(raw) < 4 + 4 * ndim:
        raise DatasetError(f"{path}: bad IDX dimension count {ndim}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape, dtype=np.int64))
    if count > MAX_IDX_ELEMENTS or len(raw) - 4 - 4 * ndim != count:
        raise DatasetError(f"{path}: header says shape {shape} but the file holds "
                           f"{len(raw) - 4 - 4 * ndim} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(directory: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise DatasetError(
        f"Fashion-MNIST file {stem}(.gz) not found in {directory}. Install the Debian package "
        "with `sudo apt-get install dataset-fashion-mnist` (it puts the files in "
        f"{DEFAULT_FASHION_MNIST_DIR}), or pass a directory holding the four IDX files."
    )


def load_fashion_mnist(directory: str | Path) -> tuple[ImageSet, ImageSet, DataInfo]:
    directory = Path(directory)
    sets = []
    for prefix in ("train", "t10k"):
        images = read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DatasetError(f"{directory}: {prefix} images {images.shape} and labels "
                               f"{labels.shape} do not match")
        if labels.size and labels.max() >= 10:
            raise DatasetError(f"{directory}: {prefix} labels must be in 0..9")
        side = images.shape[1]
        pad = (32 - side) // 2 if side < 32 else 0
        padded = np.pad(images, ((0, 0), (pad, 32 - side - pad), (pad, 32 - side - pad))) \
            if side < 32 else images
        sets.append(ImageSet(torch.from_numpy(padded.copy()).unsqueeze(1),
                             torch.from_numpy(labels.astype(np.int64))))
    mean, std = _channel_stats(sets[0].images)
    info = DataInfo("fashion-mnist", 1, 10, 32, mean, std, FASHION_MNIST_CLASSES)
    return sets[0], sets[1], info


# ---- CIFAR-10 (torchvision's on-disk formats) ----------------------------------------------

class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Reads CIFAR-10's python batches, allowing only what a numpy array needs, no other code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise DatasetError(f"CIFAR-10 batch refers to {module}.{name}: refusing to load it")
        return super().find_class(module, name)


def _read_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArrayOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except DatasetError:
        raise
    except Exception as err:  # a malformed pickle can raise almost anything
        raise DatasetError(f"cannot read CIFAR-10 batch {path}: {err}") from err
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: expected a dict batch")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data = np.asarray(batch.get("data"), dtype=np.uint8)
    labels = np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DatasetError(f"{path}: data {data.shape} and labels {labels.shape} are not CIFAR-10")
    return data.reshape(-1, 3, 32, 32), labels


def _read_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % 3073:
        raise DatasetError(f"{path}: size {raw.size} is not a multiple of 3073 bytes per record")
    records = raw.reshape(-1, 3073)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


def load_cifar10(directory: str | Path) -> tuple[ImageSet, ImageSet, DataInfo]:
    """CIFAR-10 from `cifar-10-batches-py` (torchvision's format) or `cifar-10-batches-bin`."""
    directory = Path(directory)
    candidates = [directory, directory / "cifar-10-batches-py", directory / "cifar-10-batches-bin"]
    for d in candidates:
        if (d / "data_batch_1").is_file() and (d / "test_batch").is_file():
            train_files, test_file, reader = [d / f"data_batch_{i}" for i in range(1, 6)], \
                d / "test_batch", _read_python_batch
            break
        if (d / "data_batch_1.bin").is_file() and (d / "test_batch.bin").is_file():
            train_files, test_file, reader = [d / f"data_batch_{i}.bin" for i in range(1, 6)], \
                d / "test_batch.bin", _read_binary_batch
            break
    else:
        raise DatasetError(
            f"CIFAR-10 not found under {directory}: expected cifar-10-batches-py/ (torchvision's "
            "format) or cifar-10-batches-bin/. Download it yourself, e.g. "
            "torchvision.datasets.CIFAR10(DIR, download=True), then pass --data-dir DIR."
        )
    parts = [reader(p) for p in train_files if p.is_file()]
    test_x, test_y = reader(test_file)
    train = ImageSet(torch.from_numpy(np.concatenate([x for x, _ in parts])),
                     torch.from_numpy(np.concatenate([y for _, y in parts])))
    for name, s in (("train", train.labels), ("test", torch.from_numpy(test_y))):
        if len(s) and (s.min() < 0 or s.max() > 9):
            raise DatasetError(f"CIFAR-10 {name} labels must be in 0..9")
    classes = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")
    info = DataInfo("cifar10", 3, 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                    classes)
    return train, ImageSet(torch.from_numpy(test_x.copy()), torch.from_numpy(test_y)), info


# ---- image folders (the user's own data) ---------------------------------------------------

def _read_folder(root: Path, classes: list[str], side: int, channels: int) -> ImageSet:
    from PIL import Image, UnidentifiedImageError

    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(path) as img:
                    img = img.convert("L" if channels == 1 else "RGB").resize((side, side))
                    array = np.asarray(img, dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as err:
                raise DatasetError(f"cannot read image {path}: {err}") from err
            images.append(array[None] if channels == 1 else array.transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}")
    return ImageSet(torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64))


def load_image_folder(
    directory: str | Path, input_size: int = 32, channels: int = 3, test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[ImageSet, ImageSet, DataInfo]:
    """`DIR/train/<class>/*.png` and `DIR/test/<class>/*.png`, or `DIR/<class>/*.png` (the test
    split is then a deterministic `test_fraction` of it). Images are resized to `input_size`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"image folder {str(directory)!r} does not exist")
    split_dirs = (directory / "train").is_dir() and (directory / "test").is_dir()
    class_root = directory / "train" if split_dirs else directory
    classes = sorted(p.name for p in class_root.iterdir() if p.is_dir())
    if not classes:
        raise DatasetError(f"{class_root} has no class subdirectories (expected DIR/<class>/*.png)")
    if split_dirs:
        train = _read_folder(directory / "train", classes, input_size, channels)
        test = _read_folder(directory / "test", classes, input_size, channels)
    else:
        everything = _read_folder(directory, classes, input_size, channels)
        order = torch.randperm(len(everything), generator=torch.Generator().manual_seed(seed))
        n_test = max(1, int(len(everything) * test_fraction))
        test, train = everything.take(order[:n_test]), everything.take(order[n_test:])
    mean, std = _channel_stats(train.images)
    info = DataInfo("folder", channels, len(classes), input_size, mean, std, tuple(classes))
    return train, test, info


# ---- splits, normalisation, batches --------------------------------------------------------

def load_splits(
    dataset: str, data_dir: str | Path, val_fraction: float = 0.1, train_subset: int = 0,
    test_subset: int = 0, seed: int = 0, input_size: int = 32, channels: int = 3,
) -> Splits:
    """Load `dataset` and cut deterministic train/validation/test splits.

    The validation split is `val_fraction` of the training file; `train_subset`/`test_subset`
    (0 = all) keep a seeded random subset, for CPU runs.
    """
    if dataset == "fashion-mnist":
        train, test, info = load_fashion_mnist(data_dir)
    elif dataset == "cifar10":
        train, test, info = load_cifar10(data_dir)
    elif dataset == "folder":
        train, test, info = load_image_folder(data_dir, input_size, channels, seed=seed)
    else:
        raise DatasetError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=generator)
    n_val = int(round(len(train) * val_fraction))
    val, train = train.take(order[:n_val]), train.take(order[n_val:])
    if train_subset:
        train = train.take(torch.arange(min(train_subset, len(train))))
    if test_subset:
        keep = torch.randperm(len(test), generator=generator)[: min(test_subset, len(test))]
        test = test.take(keep.sort().values)
    return Splits(train, val, test, info)


def normalize(images: torch.Tensor, info: DataInfo) -> torch.Tensor:
    """uint8 (N, C, H, W) -> normalised float32."""
    mean = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.float() / 255.0 - mean) / std


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, per image, on uint8 tensors."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
    batch = torch.arange(n)[:, None, None, None]
    channel = torch.arange(images.shape[1])[None, :, None, None]
    out = padded[batch, channel, rows, cols]
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def iterate_batches(
    data: ImageSet, info: DataInfo, batch_size: int, shuffle: bool = False,
    generator: torch.Generator | None = None, augmented: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (normalised float images, labels) batches."""
    if shuffle or augmented:
        if generator is None:
            raise ValueError("shuffling and augmentation need a seeded generator")
    order = torch.randperm(len(data), generator=generator) if shuffle else torch.arange(len(data))
    for start in range(0, len(data), batch_size):
        index = order[start: start + batch_size]
        images = data.images[index]
        if augmented:
            images = augment(images, generator)
        yield normalize(images, info), data.labels[index]


def splits_to_arrays(splits: Splits) -> dict[str, np.ndarray | dict]:
    """The splits as plain numpy arrays plus the info dict, to ship to another process or node
    (Ray's object store shares numpy arrays without copying them)."""
    out: dict[str, np.ndarray | dict] = {"info": splits.info.to_dict()}
    for name in ("train", "val", "test"):
        part: ImageSet = getattr(splits, name)
        out[f"{name}_images"] = part.images.numpy()
        out[f"{name}_labels"] = part.labels.numpy()
    return out


def splits_from_arrays(arrays: dict) -> Splits:
    """Inverse of `splits_to_arrays` (copies: arrays from the object store are read-only)."""
    parts = [ImageSet(torch.from_numpy(np.array(arrays[f"{name}_images"], dtype=np.uint8)),
                      torch.from_numpy(np.array(arrays[f"{name}_labels"], dtype=np.int64)))
             for name in ("train", "val", "test")]
    return Splits(*parts, DataInfo.from_dict(arrays["info"]))
