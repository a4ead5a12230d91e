"""Benchmark step 2 on Ray Tune: several split points with 1 vs. 2 concurrent trials.

Run `python bench/bench_tune.py [--splits pool2,pool3,pool4,pool5] [--train-subset 2000]`. It
builds a small base model (VGG-11 at width 0.25, random weights: only time matters here) for a
Fashion-MNIST subset (synthetic bars when the Debian dataset is missing), skips step 1 (step 2
starts from the base model), and runs the same step-2 ladders three times into separate series:

    in-process   `prune_series`, one torch thread
    tune x1      `launch_pruning`, 1 CPU and 1 torch thread per trial, one trial at a time
    tune x2      the same with two trials at a time

It prints the step-2 wall times, the speed-up of x2 over x1, and Ray's overhead per trial,
(tune x1 - in-process) / trials: actor start-up (imports), shipping the start model, reporting
and collecting checkpoints. The three series must hold the same variants. Before and after, it
measures what the machine allows: two plain single-threaded torch processes side by side vs. one
after the other (other work on the two cores lowers that ceiling, and the speed-up with it).
"""

from __future__ import annotations

import argparse
import gzip
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.checkpoint import save_checkpoint
from pipeline.config import PruneConfig
from pipeline.data import DEFAULT_FASHION_MNIST_DIR
from pipeline.models.registry import build, make_spec
from pipeline.prune_job import prune_series


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def synthetic_fashion(directory: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Fashion-MNIST-format files where each class is a bright block in its own grid cell."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, label in enumerate(labels):
            row, col = divmod(int(label), 4)
            images[i, 9 * row + 1: 9 * row + 8, 7 * col: 7 * col + 6] = 250
        _write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return directory


def _quiet(message: str) -> None:
    pass


def _burn(arch: str, width: float, steps: int, barrier, results) -> None:
    """A fixed single-threaded training workload (what a trial mostly does), timed after all
    workers are ready."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build(make_spec(arch, width, in_channels=1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 1, 32, 32), torch.randint(0, 10, (64,))
    barrier.wait()
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    results.put(time.perf_counter() - started)


def machine_ceiling(arch: str, width: float, steps: int = 15) -> float:
    """How much faster two single-threaded processes finish two workloads side by side than
    one after the other on this machine right now: the best speed-up any scheduler can get."""
    context = multiprocessing.get_context("spawn")

    def timed(processes: int) -> float:
        barrier, results = context.Barrier(processes), context.Queue()
        workers = [context.Process(target=_burn, args=(arch, width, steps, barrier, results))
                   for _ in range(processes)]
        for w in workers:
            w.start()
        elapsed = max(results.get() for _ in workers)
        for w in workers:
            w.join()
        return elapsed

    return 2 * timed(1) / timed(2)


def _step2_wall_s(out: str) -> tuple[float, dict]:
    from tune.collect import read_run_log
    from tune.launch import RUN_LOG

    phase = [p for p in read_run_log(Path(out) / RUN_LOG) if p["phase"] == "step2"][-1]
    return phase["wall_s"], phase["trials"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", default="pool2,pool3,pool4,pool5",
                        help="step-2 split points, one trial per pruned layer")
    parser.add_argument("--arch", default="vgg11")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--train-subset", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=4, help="step-2 ladder length")
    parser.add_argument("--finetune-epochs", type=float, default=0.5)
    parser.add_argument("--workdir", help="keep outputs here (default: a temporary directory)")
    args = parser.parse_args()
    from twostep.ray_env import apply_ray_env

    apply_ray_env()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-tune-"))
    data_dir = Path(DEFAULT_FASHION_MNIST_DIR)
    if not (data_dir / "train-images-idx3-ubyte.gz").is_file():
        data_dir = synthetic_fashion(work / "data", args.train_subset, 500)
    base = work / "base.safetensors"
    torch.manual_seed(0)
    spec = make_spec(args.arch, args.width, in_channels=1)
    save_checkpoint(base, build(spec), spec)
    print(f"base model: {args.arch} x{args.width} ({sum(spec.widths)} filters), random weights")
    ceilings = [machine_ceiling(args.arch, args.width)]
    print(f"before: load average {os.getloadavg()[0]:.2f}, two plain single-threaded processes "
          f"side by side run {ceilings[0]:.2f}x faster than one after the other")

    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    config = PruneConfig(
        base=str(base), data_dir=str(data_dir), train_subset=args.train_subset, test_subset=500,
        val_subset=300, threads=1, rank_batches=4, step1_max_iterations=0, step2_splits=splits,
        step2_steps=args.steps, step2_finetune_epochs=args.finetune_epochs, bytes_images=50)
    outs = {name: str(work / name) for name in ("in-process", "tune-x1", "tune-x2")}
    for out in outs.values():
        shutil.rmtree(out, ignore_errors=True)
        prune_series(config.replace(out=out), steps="1", progress=False, log=_quiet)

    started = time.perf_counter()
    reference = prune_series(config.replace(out=outs["in-process"]), progress=False,
                             log=_quiet)
    in_process_s = time.perf_counter() - started
    trials = len({v.layer for v in reference.manifest.step(2)})
    variants = len(reference.manifest.step(2))
    print(f"step 2: {trials} trials (layers), {variants} variants; in-process {in_process_s:.1f} s")

    import ray

    from tune.launch import launch_pruning
    from tune.plan import TrialResources

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    print(f"ray.init: {time.perf_counter() - started:.1f} s")
    walls = {}
    try:
        for name, concurrent in (("tune-x1", 1), ("tune-x2", 2)):
            store = launch_pruning(config.replace(out=outs[name]), steps="2",
                                   progress=False, log=_quiet, max_concurrent=concurrent,
                                   resources=TrialResources(cpus=1))
            assert store.ids() == reference.ids(), f"{name} holds other variants"
            walls[name], per_trial = _step2_wall_s(outs[name])
            inside = sum(t["time_total_s"] for t in per_trial.values())
            print(f"{name}: step-2 wall {walls[name]:.1f} s (time inside trials {inside:.1f} s)")
    finally:
        ray.shutdown()
    ceilings.append(machine_ceiling(args.arch, args.width))
    print(f"after: load average {os.getloadavg()[0]:.2f}, two plain processes {ceilings[1]:.2f}x")
    print(f"speed-up, 2 vs. 1 concurrent trials: {walls['tune-x1'] / walls['tune-x2']:.2f}x "
          f"(target >= 1.7x; the machine allowed {min(ceilings):.2f}-{max(ceilings):.2f}x)")
    print(f"Ray overhead per trial: {(walls['tune-x1'] - in_process_s) / trials:.1f} s "
          f"((tune x1 - in-process) / {trials} trials)")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
