"""GPU check (not a test): train, prune (step 1 and step 2) and profile on CUDA with the same
pipeline code the CPU runs, on synthetic Fashion-MNIST-format files. Prints throughput figures.

    python bench/gpu_check.py [--width 1.0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from datafiles import write_fashion_like  # noqa: E402

from pipeline.base_model import train_base  # noqa: E402
from pipeline.config import PruneConfig, TrainConfig  # noqa: E402
from pipeline.profiler import profile_model  # noqa: E402
from pipeline.prune_job import prune_series  # noqa: E402
from pipeline.report import format_series_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--images", type=int, default=20000)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "no CUDA GPU here"
    print("GPU:", torch.cuda.get_device_name(0), "torch", torch.__version__)
    root = Path(tempfile.mkdtemp())
    write_fashion_like(root / "data", n_train=args.images, n_test=2000, learnable=True)
    train = TrainConfig(data_dir=str(root / "data"), arch="vgg16", width=args.width, epochs=2,
                        device="cuda", out=str(root / "base.safetensors"))
    start = time.perf_counter()
    _, spec, metrics = train_base(train, progress=False)
    seconds = time.perf_counter() - start
    print(f"train: VGG-16 width {args.width}, 2 epochs x {int(args.images * 0.9)} images in "
          f"{seconds:.1f} s ({2 * args.images * 0.9 / seconds:.0f} img/s), test acc "
          f"{metrics['test_accuracy']:.4f}")
    prune = PruneConfig(base=train.out, data_dir=str(root / "data"), out=str(root / "series"),
                        device="cuda", step1_max_iterations=2, step1_budget=0.5,
                        step1_finetune_epochs=0.5, step2_splits=("pool3", "pool5"), step2_steps=4,
                        step2_finetune_epochs=0.25, bytes_images=100)
    start = time.perf_counter()
    store = prune_series(prune, progress=False)
    print(f"prune: {len(store.variants)} variants in {time.perf_counter() - start:.1f} s")
    print(format_series_table(store.manifest, max_loss=0.05))
    model, spec, _ = store.load_model(store.manifest.base)
    profile = profile_model(model.cuda(), spec, batch_size=1, warmup=10, repeats=30, device="cuda")
    print(f"profile on cuda, batch 1: whole forward {profile['whole_ms']:.3f} ms, "
          f"sum of stages {profile['total_ms']:.3f} ms")


if __name__ == "__main__":
    main()
