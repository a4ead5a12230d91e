"""The names a config may use, importable without torch (so `--help` and config checks start
fast): datasets, the default data directory, and the architectures with their layouts."""

from __future__ import annotations

import os

# The Debian package's directory, unless TWOSTEP_FASHION_MNIST_DIR names another (a user who
# cannot install the package; scripts/ensure-data.sh reads the same variable).
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
DEFAULT_FASHION_MNIST_DIR = os.environ.get("TWOSTEP_FASHION_MNIST_DIR") or DEBIAN_FASHION_MNIST_DIR
DATASETS = ("fashion-mnist", "cifar10", "folder")

# VGG: number of conv layers per block; every block ends with a 2x2 max-pool.
VGG_BLOCKS: dict[str, tuple[int, ...]] = {
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}
# ResNet-18 and MobileNetV2 follow torchvision's definitions (pipeline/models/resnet.py, mobilenet.py).
ARCHS = (*VGG_BLOCKS, "resnet18", "mobilenetv2")
