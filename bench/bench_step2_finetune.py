"""Step 2 of one channel group from a series' stored step-1 model, with a chosen fine-tuning
length and width ladder: how much of step 2's accuracy loss is fine-tuning budget.

Run: `python bench/bench_step2_finetune.py SERIES GROUP --config FILE --epochs E --ladder W1,W2`
(e.g. `runs/resnet18/series layer2 --config configs/resnet18.toml --epochs 1.5 --ladder 2,1`).
The prune settings come from the config's [prune] section (data, distillation, ...) with
`step2_finetune_epochs` replaced by --epochs. Prints, per width, the test accuracy against the
unpruned base and the coded bytes at each split the group sets against the base's float32
tensor there. Nothing is written to the series.
"""

from __future__ import annotations

import argparse
import time

from pipeline.config import PruneConfig, make_config
from pipeline.data import DataInfo
from pipeline.prune_job import describe_variant, load_context, step2_layers
from pipeline.series import SeriesStore
from pipeline.steps import run_step2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("series")
    parser.add_argument("group", help="the channel group step 2 cuts (e.g. layer2, stage3, conv4_3)")
    parser.add_argument("--config", required=True, help="TOML file whose [prune] section to use")
    parser.add_argument("--epochs", type=float, required=True, help="fine-tuning epochs per cut")
    parser.add_argument("--ladder", required=True, help="widths to cut to, comma-separated")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    store = SeriesStore.open(args.series)
    if store.manifest.step1 is None:
        raise SystemExit(f"{args.series} has no finished step 1")
    model, spec, _ = store.load_model(store.manifest.step1)
    base = store.manifest.base_variant
    config = make_config(PruneConfig, args.config, "prune", step2_finetune_epochs=args.epochs,
                         threads=args.threads)
    splits = step2_layers(spec, config.replace(step2_splits=()))[args.group]
    ctx = load_context(config, DataInfo.from_dict(store.manifest.data))
    ladder = [int(w) for w in args.ladder.split(",")]
    print(f"{store.manifest.step1}: {args.group} {spec.width_of()[args.group]} -> {ladder}, "
          f"{args.epochs:g} epochs per cut; base test accuracy {base.accuracy:.4f}")
    start = time.perf_counter()
    for snap in run_step2(model, spec, args.group, ctx.splits, config, ladder, teacher=ctx.teacher):
        entry = describe_variant(ctx, snap.model, snap.spec, step=2, iteration=snap.iteration,
                                 val_accuracy=snap.val_accuracy, offered_splits=splits, layer=args.group)
        sizes = ", ".join(
            f"{split} {entry.splits[split].bytes_mean:.0f} B "
            f"({4 * base.splits[split].elements / entry.splits[split].bytes_mean:.1f}x)"
            for split in splits)
        change = 100 * (entry.accuracy - base.accuracy)
        print(f"width {snap.spec.width_of()[args.group]}: test {entry.accuracy:.4f} "
              f"({change:+.2f} points against the base); {sizes}; {time.perf_counter() - start:.0f} s",
              flush=True)


if __name__ == "__main__":
    main()
