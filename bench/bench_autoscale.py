"""`twostep prune --ray` on a cluster that Ray's autoscaler grows and shrinks from cluster.yaml.

The cluster (twostep/autoscaling_cluster.py) runs on this machine: a head with no CPUs, Ray's
autoscaler, and cluster.yaml's worker node types (CPUs divided by 4, GPUs as declared resources,
the 10-minute idle timeout as 10 s); at start only `edge` (min_workers 1) runs, no pruning
worker. Writes a small learnable Fashion-MNIST-format dataset and trains a tiny base model in
OUT, then:

1. `twostep prune --ray ADDRESS --gpus-per-trial 1 --trial-resource prune=1`: step 1 as one
   trial, step 2 as one trial per layer, each reserving a (fake) GPU and the `prune` resource
   only `prune_gpu` nodes offer, so the pending trials make the autoscaler launch those nodes;
2. waits until the autoscaler has removed the nodes it launched for them (idle timeout);
3. prunes the same series in this process, each layer's ladder starting from the stored step-1
   model as the trials do, and compares the two (tensors and manifest entries);
4. prints when each node came and went, and until when trials held its GPU.

    .venv/bin/python bench/bench_autoscale.py --out runs/bench-autoscale
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from pipeline.series import SeriesStore  # noqa: E402
from twostep.autoscaling_cluster import AutoscalingCluster  # noqa: E402

TWOSTEP = str(Path(sys.executable).with_name("twostep"))
SPLITS = ("conv1_1", "pool2", "conv3_2")
EDGE_TIMEOUT_S = 60.0
REMOVAL_TIMEOUT_S = 120.0
# The prune's knobs, as flags and as PruneConfig keys (the local run).
PRUNE = {"threads": 1, "rank_batches": 2, "batch_size": 64, "step1_divisor": 8,
         "step1_finetune_epochs": 0.25, "step1_budget": 1.0, "step1_max_iterations": 2,
         "step2_steps": 3, "step2_finetune_epochs": 0.25, "bytes_images": 16}


class NodeWatch(threading.Thread):
    """Polls the cluster's node table: when each node was first seen alive and dead (seconds
    since `t0`), its resources, and whether GPU work ran on it."""

    def __init__(self, t0: float, period_s: float = 0.25):
        super().__init__(daemon=True)
        self.t0, self.period_s = t0, period_s
        self.nodes: dict[str, dict] = {}
        self.done = threading.Event()

    def run(self) -> None:
        import ray
        from ray._private.state import available_resources_per_node

        while not self.done.is_set():
            now = time.monotonic() - self.t0
            available = available_resources_per_node()
            for node in ray.nodes():
                info = self.nodes.setdefault(node["NodeID"], {
                    "came_s": now if node["Alive"] else None, "went_s": None, "busy_s": None,
                    "resources": {k: v for k, v in node["Resources"].items()
                                  if k in ("CPU", "GPU") or k.isalpha() and k not in
                                  ("memory", "object_store_memory")}})
                if not node["Alive"] and info["went_s"] is None:
                    info["went_s"] = now
                gpus, free = info["resources"].get("GPU", 0), available.get(node["NodeID"])
                if gpus and free and free.get("GPU", 0) < gpus:  # a resource all in use is left out
                    info["busy_s"] = now  # the last time GPU work was seen on it
            time.sleep(self.period_s)

    def of_type(self, name: str, types: dict[str, dict]) -> list[dict]:
        return [n for n in self.nodes.values() if node_type(n["resources"], types) == name]


def autoscaler_events(monitor_log: Path, wall0: float) -> list[tuple[float, str]]:
    """The autoscaler's decisions to add or remove nodes (seconds since wall0, message), from
    its log."""
    events = []
    for line in monitor_log.read_text(errors="replace").splitlines():
        _, marker, message = line.partition(":event_summary:")
        if marker and message.startswith(("Adding", "Removing")):
            stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            events.append((stamp - wall0, message.strip()))
    return events


def node_type(resources: dict, types: dict[str, dict]) -> str:
    for name, spec in types.items():
        declared = {k: v for k, v in spec["resources"].items() if k != "object_store_memory"}
        if declared == resources:
            return name
    return "head" if not resources.get("CPU") else "?"


def differing_variants(a: SeriesStore, b: SeriesStore) -> list[str]:
    """The variants whose tensors or manifest entries (the sha256 aside) differ."""
    differ = []
    for mine, theirs in zip(a.variants, b.variants, strict=True):
        wa, wb = a.load_model(mine.id)[0].state_dict(), b.load_model(theirs.id)[0].state_dict()
        entries = [{k: v for k, v in e.to_json().items() if k != "sha256"} for e in (mine, theirs)]
        if (wa.keys() != wb.keys() or not all(torch.equal(wa[k], wb[k]) for k in wa)
                or entries[0] != entries[1]):
            differ.append(mine.id)
    return differ


def local_run(base: Path, data: Path, out: Path) -> SeriesStore:
    from pipeline.config import PruneConfig
    from pipeline.prune_job import prune_series

    config = PruneConfig(base=str(base), data_dir=str(data), out=str(out), augment=False,
                         step2_splits=SPLITS, **PRUNE)
    prune_series(config, steps="1", progress=False, log=lambda _: None)
    for split in SPLITS:
        store = prune_series(config.replace(step2_splits=(split,)), progress=False,
                             log=lambda _: None)
    return store


def prune_argv(base: Path, data: Path, out: Path, address: str) -> list[str]:
    flags = [x for k, v in PRUNE.items() for x in ("--" + k.replace("_", "-"), str(v))]
    return [TWOSTEP, "prune", "--ray", address, "--quiet", "--base", str(base), "--data-dir",
            str(data), "--out", str(out), "--step2-splits", ",".join(SPLITS), "--no-augment",
            "--cpus-per-trial", "1", "--gpus-per-trial", "1", "--trial-resource", "prune=1", *flags]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-autoscale")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    from datafiles import write_fashion_like

    from pipeline.base_model import train_base
    from pipeline.config import TrainConfig

    data, base = out / "data", out / "base.safetensors"
    train_start = time.monotonic()
    write_fashion_like(data, n_train=400, n_test=100, learnable=True)
    train_base(TrainConfig(data_dir=str(data), arch="vgg11", width=0.0625, epochs=3, lr=0.05,
                           augment=False, threads=1, out=str(base)), progress=False, log=None)
    print(f"data and base model: {time.monotonic() - train_start:.1f} s")

    import ray

    t0, wall0 = time.monotonic(), time.time()
    with AutoscalingCluster(log_dir=str(out)) as cluster:
        print(f"head up in {time.monotonic() - t0:.1f} s at {cluster.address}")
        types = cluster.config["available_node_types"]
        ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
        watch = NodeWatch(t0)
        watch.start()
        deadline = time.monotonic() + EDGE_TIMEOUT_S
        while not watch.of_type("edge", types):  # the node cluster.yaml keeps up (min_workers 1)
            if time.monotonic() > deadline:
                print(f"no edge node came up in {EDGE_TIMEOUT_S:g} s (logs in {out})")
                return 1
            time.sleep(0.25)
        start = time.monotonic() - t0
        result = subprocess.run(prune_argv(base, data, out / "series", cluster.address),
                                capture_output=True, text=True, env=cluster.env)
        end = time.monotonic() - t0
        if result.returncode != 0:
            print(f"twostep prune failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
            return 1
        print(f"twostep prune --ray: {start:.1f} s -> {end:.1f} s ({end - start:.1f} s)")
        deadline = time.monotonic() + REMOVAL_TIMEOUT_S
        while time.monotonic() < deadline and any(
                n["went_s"] is None for n in watch.of_type("prune_gpu", types)):
            time.sleep(0.5)
        watch.done.set()
        watch.join()
        ray.shutdown()

    print("node timeline (seconds since the head was started):")
    for nid, n in sorted(watch.nodes.items(), key=lambda kv: kv[1]["came_s"] or 0):
        kind = node_type(n["resources"], types)
        came = f"came {n['came_s']:6.1f}" if n["came_s"] is not None else "came  (dead)"
        went = "still up at the end" if n["went_s"] is None else f"went {n['went_s']:6.1f}"
        busy = "no trial seen on it" if n["busy_s"] is None else f"trials until {n['busy_s']:6.1f}"
        idle = ""
        if n["went_s"] is not None and n["busy_s"] is not None:
            idle = f", removed after {n['went_s'] - n['busy_s']:.1f} s idle"
        print(f"  {nid[-5:]} {kind:9} {json.dumps(n['resources'], sort_keys=True):40} {came}, "
              f"{went}; {busy}{idle}")
    print("the autoscaler's decisions (its log):")
    for at, message in autoscaler_events(out / "monitor.log", wall0):
        print(f"  {at:6.1f} {message}")
    pruners = watch.of_type("prune_gpu", types)
    removed = all(n["went_s"] is not None for n in pruners)
    print(f"prune_gpu nodes launched: {len(pruners)}, all removed after the idle timeout: {removed}")

    local_start = time.monotonic()
    reference = local_run(base, data, out / "local")
    print(f"the local run took {time.monotonic() - local_start:.1f} s")
    ours = SeriesStore.open(out / "series")
    same = ours.ids() == reference.ids()
    differ = differing_variants(ours, reference) if same else ["(other variants)"]
    same = same and not differ
    print(f"series equals the local run, tensors and manifest entries: {same} "
          f"({len(ours.ids())} variants; differing: {differ or 'none'})")
    return 0 if same and pruners and removed else 1


if __name__ == "__main__":
    raise SystemExit(main())
