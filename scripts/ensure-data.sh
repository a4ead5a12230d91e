#!/usr/bin/env bash
# Makes sure the Fashion-MNIST IDX files of the Debian package dataset-fashion-mnist are present.
# Installs the package when missing and running as root; otherwise says how to get it.
set -euo pipefail
dir=${TWOSTEP_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
if [ -f "$dir/train-images-idx3-ubyte.gz" ] && [ -f "$dir/t10k-labels-idx1-ubyte.gz" ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Installing the Debian package dataset-fashion-mnist (31 MB) ..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  exit 0
fi
cat >&2 <<MSG
Fashion-MNIST is missing from $dir.
Install it with:  sudo apt-get install dataset-fashion-mnist
or put the four IDX files (train-images-idx3-ubyte.gz, ...) in a directory and set
TWOSTEP_FASHION_MNIST_DIR=that/directory (or pass --data-dir to twostep commands).
MSG
exit 1
