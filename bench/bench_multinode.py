"""The same prune on one node and on two nodes, and a replica's first fetch on a fresh node.

Needs root (mount namespaces; twostep/local_cluster.py). Writes a small learnable Fashion-MNIST
-format dataset and trains a tiny base model in OUT (unless --data-dir/--base are given), then:

1. `twostep prune --ray` on a one-node local Ray session (storage OUT/one/tune);
2. the same command on a two-node cluster whose worker cannot see OUT (trials run there: the
   head has no CPUs), Tune storage in a directory both nodes see;
3. compares the two series tensor by tensor;
4. `twostep serve` of the two-node series from the driver's disk; times the EdgeTail replica's
   first fetch and sha256 check of a variant (reported by /v1/health) and the first request.

    sudo .venv/bin/python bench/bench_multinode.py --out runs/bench-multinode

Prints the figures (wall times are of whole CLI commands, Ray start included).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from httputil import wait_healthy  # noqa: E402  (tests/, for its test helpers)

from pipeline.series import SeriesStore  # noqa: E402
from twostep.local_cluster import TwoNodeCluster, cluster_env, permitted  # noqa: E402

TWOSTEP = str(Path(sys.executable).with_name("twostep"))


def prune_argv(base: Path, data: Path, out: Path, address: str | None, storage: Path,
               split: str) -> list[str]:
    ray = ["--ray", address] if address else ["--ray", "local"]
    return [TWOSTEP, "prune", *ray, "--quiet", "--base", str(base), "--data-dir", str(data),
            "--out", str(out), "--storage-path", str(storage), "--threads", "1",
            "--rank-batches", "4", "--step1-divisor", "8", "--step1-finetune-epochs", "0.5",
            "--step1-max-iterations", "3", "--step2-steps", "3", "--step2-finetune-epochs", "0.5",
            "--bytes-images", "32", "--step2-splits", f"{split},conv4_1", "--cpus-per-trial", "1"]


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env=cluster_env())
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def same_tensors(a: SeriesStore, b: SeriesStore) -> tuple[int, list[str]]:
    differ = []
    for vid in a.ids():
        wa, wb = a.load_model(vid)[0].state_dict(), b.load_model(vid)[0].state_dict()
        if wa.keys() != wb.keys() or not all(torch.equal(wa[k], wb[k]) for k in wa):
            differ.append(vid)
    return len(a.ids()), differ


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-multinode")
    parser.add_argument("--split", default="pool2",
                        help="first of the two step-2 splits; the tail is timed there")
    args = parser.parse_args()
    reason = permitted()
    if reason:
        print(f"cannot run: {reason}")
        return 1
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    driver, shared = out / "driver", out / "shared"
    shared.mkdir(parents=True)
    from datafiles import write_fashion_like

    from pipeline.base_model import train_base
    from pipeline.config import TrainConfig

    data, base = driver / "data", driver / "base.safetensors"
    write_fashion_like(data, n_train=2000, n_test=200, learnable=True)
    train_base(TrainConfig(data_dir=str(data), arch="vgg11", width=0.125, epochs=2, lr=0.05,
                           augment=False, threads=1, out=str(base)), progress=False, log=None)

    one_s = timed(prune_argv(base, data, driver / "one" / "series", None, driver / "one" / "tune",
                             args.split))
    print(f"prune on 1 node (local Ray session): {one_s:.1f} s")
    with TwoNodeCluster(driver, worker_cpus=2, log_dir=str(out),
                        env={"TWOSTEP_CACHE_DIR": str(out / "cache")}) as cluster:
        two_s = timed(prune_argv(base, data, driver / "two" / "series", cluster.address,
                                 shared / "tune", args.split))
        print(f"prune on 2 nodes (trials on the isolated worker): {two_s:.1f} s")
        one, two = SeriesStore.open(driver / "one" / "series"), SeriesStore.open(driver / "two" / "series")
        count, differ = same_tensors(one, two)
        print(f"series identical tensor by tensor: {not differ and one.ids() == two.ids()} "
              f"({count} variants; differing: {differ or 'none'})")

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen(
            [TWOSTEP, "serve", str(two.directory), "--address", cluster.address, "--port", str(port),
             "--proxy-location", "HeadOnly", "--tail-replicas", "1", "--head-cpus", "0",
             "--ms-per-mmac", "20"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=cluster_env())
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(f"{url}/v1/health", proc, timeout_s=300)
            from serve.runner import VariantRunner

            split = args.split
            variant = [v.id for v in two.manifest.step(2) if split in v.splits][-1]
            runner = VariantRunner.load(two, variant)
            pixels = np.zeros((1, 1, 32, 32), np.uint8)
            frame = runner.run_head(pixels, split).frame
            timings = []
            for _ in range(20):
                start = time.perf_counter()
                answer = requests.post(f"{url}/v1/tail", params={"variant": variant, "split": split},
                                       data=frame, headers={"Content-Type": "application/octet-stream"},
                                       timeout=120)
                timings.append((time.perf_counter() - start) * 1000)
                assert answer.status_code == 200, answer.text
            health = requests.get(f"{url}/v1/health", timeout=60).json()
            fetch = [f for f in health["replicas"]["tail"]["fetches"] if f["variant"] == variant][0]
            print(f"EdgeTail on the fresh node: fetched and verified {variant} "
                  f"({fetch['bytes']} B) in {fetch['ms']:.1f} ms; first /v1/tail request "
                  f"{timings[0]:.0f} ms (fetch + load + run), later p50 {np.median(timings[1:]):.1f} ms")
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=90)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
