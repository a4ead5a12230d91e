"""Benchmark: 2-step pruning of VGG-16 (width 0.25) on Fashion-MNIST on this machine.

Prints the settings, the paper-style table and the issue-4 targets, measured in this run against
the unpruned model of the same run:
  step 1: >= 6x fewer MACs at <= 1.0 point test accuracy loss;
  step 2 + 8-bit coding: at the best split, >= 100x fewer bytes (whole frame) than that split's
  float32 tensor of the unpruned model, at <= 1.0 point loss.

The base must not have been trained on the validation images (prepare() warns when it was):

    .venv/bin/twostep train --arch vgg16 --width 0.25 --epochs 5 --lr 0.05 --val-fraction 0.1 \
        --seed 0 --out runs/bench-prune-base/vgg16-w025.safetensors
    .venv/bin/python bench/bench_prune.py --fresh --mac-weight 0.1

The run that met both targets here (2,401 s on 2 cores: step 1 6.02x at +0.29 points, step 2
at conv4_3 51 B vs 8,192 B = 160.6x at +0.64 points):

    .venv/bin/python bench/bench_prune.py --fresh --out runs/bench-prune-r6/series \
        --mac-weight 0.1 --step1-recovery-epochs 5 --step2-splits pool4 --step2-steps 6 \
        --step2-finetune-epochs 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from pipeline.config import PruneConfig
from pipeline.prune_job import prune_series
from pipeline.report import format_series_table, series_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="runs/bench-prune-base/vgg16-w025.safetensors",
                        help="checkpoint of the unpruned model, trained with val_fraction 0.1, seed 0")
    parser.add_argument("--out", default="runs/bench-prune/series")
    parser.add_argument("--fresh", action="store_true", help="delete --out first")
    parser.add_argument("--train-subset", type=int, default=0, help="0: all 54,000")
    parser.add_argument("--val-subset", type=int, default=0, help="0: all 6,000")
    parser.add_argument("--test-subset", type=int, default=0, help="0: all 10,000")
    parser.add_argument("--mac-weight", type=float, default=0.0)
    parser.add_argument("--step1-finetune-epochs", type=float, default=1.0)
    parser.add_argument("--finetune-lr", type=float, default=0.01)
    parser.add_argument("--step1-recovery-epochs", type=float, default=0.0,
                        help="more fine-tuning for an iteration under the budget before rolling back")
    parser.add_argument("--distill-weight", type=float, default=0.0,
                        help="knowledge distillation from the unpruned model while fine-tuning")
    parser.add_argument("--distill-temperature", type=float, default=4.0)
    parser.add_argument("--step1-target", type=float, default=6.0)
    parser.add_argument("--step2-splits", default="conv1_1,pool1,pool2,pool3,pool4,pool5")
    parser.add_argument("--step2-steps", type=int, default=8)
    parser.add_argument("--step2-finetune-epochs", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.fresh:
        shutil.rmtree(args.out, ignore_errors=True)
    config = PruneConfig(
        base=args.base, out=args.out, train_subset=args.train_subset, val_subset=args.val_subset,
        test_subset=args.test_subset, mac_weight=args.mac_weight, finetune_lr=args.finetune_lr,
        distill_weight=args.distill_weight, distill_temperature=args.distill_temperature,
        step1_finetune_epochs=args.step1_finetune_epochs,
        step1_recovery_epochs=args.step1_recovery_epochs,
        step1_target_mac_reduction=args.step1_target, step1_budget=0.01,
        step2_splits=tuple(s for s in args.step2_splits.split(",") if s),
        step2_steps=args.step2_steps, step2_finetune_epochs=args.step2_finetune_epochs,
        threads=args.threads,
    )
    print("settings:", json.dumps(config.model_dump(mode="json")))
    start = time.perf_counter()
    store = prune_series(config, progress=False)
    wall = time.perf_counter() - start
    manifest = store.manifest
    print(format_series_table(manifest, max_loss=0.01))
    base, step1 = manifest.base_variant, manifest.step1_variant
    mac_ratio = base.macs / step1.macs
    s1_loss = base.accuracy - step1.accuracy
    print(f"\nwall time {wall:.0f} s ({wall / 60:.1f} min)")
    print(f"step 1: {mac_ratio:.2f}x fewer MACs at {100 * s1_loss:+.2f} points test accuracy loss "
          f"-> target (>= 6x, <= 1.0 pt) {'met' if mac_ratio >= 6 and s1_loss <= 0.01 else 'NOT met'}")
    rows = [r for r in series_rows(manifest, 0.01) if r.get("s2_within_budget")]
    if rows:
        best = max(rows, key=lambda r: r["byte_reduction_vs_float32"])
        ratio = best["byte_reduction_vs_float32"]
        loss = base.accuracy - best["s2_accuracy"]
        print(f"step 2: best split {best['split']} ({best['s2_id']}): {best['s2_bytes']:.0f} B per "
              f"frame vs {best['orig_float32_bytes']} B float32 = {ratio:.1f}x fewer bytes at "
              f"{100 * loss:+.2f} points -> target (>= 100x, <= 1.0 pt) "
              f"{'met' if ratio >= 100 else 'NOT met'}")
    else:
        print("step 2: no variant within 1.0 point of the original")
    Path(args.out, "bench.json").write_text(json.dumps(
        {"wall_seconds": wall, "mac_reduction": mac_ratio, "step1_loss": s1_loss,
         "rows": series_rows(manifest, 0.01)}, indent=1))


if __name__ == "__main__":
    main()
