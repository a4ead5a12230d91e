"""Benchmark: what a VGG's shape, not only its MACs, does to its device call (ONNX Runtime).

Takes a series' kept step-1 model and times, on ONNX Runtime as a device calls it (batch 1, one
thread, 5 ms idle before each call, round-robin: `pipeline.call_time.call_ms`), at each width
multiplier asked for (the series' own, and e.g. the full-width VGG-16):
- the unpruned base at that width;
- the kept step-1 shape, scaled to that width ("step 1");
- the same with the split layer (default conv4_3) cut to 8 filters (a step-2 model as the bench's
  (f) runs it whole on a device);
- the base scaled uniformly to about the step-1 model's MAC count ("uniform");
- the step-1 shape with conv5 cut to a quarter ("conv5 / 4").

Weights are random: a call's time depends on the shape alone. It prints MAC and time reductions
against the base of the same width and their ratio (time per MAC, issue 26's target >= 0.8):
where the same pruning would show more of its cut as time on a wider model, and how much a shape
that spares the weight-bound late layers gives away.

    .venv/bin/python bench/bench_widths.py --series runs/vgg16-half-long/series --widths 0.5,1.0
"""

from __future__ import annotations

import argparse
import math

import torch

from pipeline.call_time import call_ms
from pipeline.models.registry import ArchSpec, build, make_spec
from pipeline.series import SeriesStore
from pipeline.split import total_macs

BLOCK = 8  # widths stay multiples of step1_round_to's default


def scaled(widths: tuple[int, ...], factor: float) -> tuple[int, ...]:
    return tuple(max(BLOCK, round(w * factor / BLOCK) * BLOCK) for w in widths)


def with_layer(spec: ArchSpec, layer: str, width: int) -> tuple[int, ...]:
    names = list(spec.width_of())
    widths = list(spec.widths)
    widths[names.index(layer)] = width
    return tuple(widths)


def shapes(base: ArchSpec, kept: ArchSpec, factor: float, split_layer: str) -> dict[str, ArchSpec]:
    """The shapes timed at one width: `factor` scales the series' widths to it."""
    def spec(widths) -> ArchSpec:
        return ArchSpec(base.arch, tuple(widths), base.in_channels, base.num_classes, base.input_size)

    wide_base, step1 = spec(scaled(base.widths, factor)), spec(scaled(kept.widths, factor))
    names = list(base.width_of())
    conv5 = [i for i, n in enumerate(names) if n.startswith("conv5")]
    quarter = tuple(max(BLOCK, w // 4 // BLOCK * BLOCK) if i in conv5 else w
                    for i, w in enumerate(step1.widths))
    uniform = scaled(wide_base.widths, 1 / math.sqrt(total_macs(wide_base) / total_macs(step1)))
    return {"base": wide_base, "step 1": step1,
            f"step 1, {split_layer} = 8": spec(with_layer(step1, split_layer, 8)),
            "uniform": spec(uniform), "conv5 / 4": spec(quarter)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", required=True, help="a series with a finished step 1")
    parser.add_argument("--widths", default="1.0", help="width multipliers of the full network, "
                        "comma-separated (the series' own is found from its base)")
    parser.add_argument("--split-layer", default="conv4_3")
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    store = SeriesStore.open(args.series)
    manifest = store.manifest
    if manifest.step1 is None:
        parser.error(f"{args.series} has no finished step 1")
    base, kept = manifest.base_arch, manifest.step1_variant.arch_spec
    if args.split_layer not in base.width_of():
        parser.error(f"--split-layer {args.split_layer!r} is not a layer of {base.arch}")
    full_widths = make_spec(base.arch, 1.0, base.in_channels, base.num_classes, base.input_size).widths
    own = base.widths[-1] / full_widths[-1]
    try:
        widths = [float(w) for w in args.widths.split(",")]
    except ValueError:
        parser.error(f"--widths {args.widths!r} must be numbers, comma-separated")
    print(f"series {args.series}: base width {own:g}, kept {manifest.step1} "
          f"({total_macs(base) / total_macs(kept):.2f}x fewer MACs), widths {kept.widths}")
    print(f"ONNX Runtime, batch 1, one thread, 5 ms idle before each call, median of {args.repeats}")
    for width in widths:
        timed = shapes(base, kept, width / own, args.split_layer)
        models = {name: (build(spec).eval(), spec) for name, spec in timed.items()}
        with torch.inference_mode():
            ms = call_ms(models, repeats=args.repeats)
        base_macs, base_ms = total_macs(timed["base"]), ms["base"]
        print(f"\nwidth {width:g}: base {base_macs / 1e6:.1f} M MACs, {base_ms:.3f} ms")
        print(f"  {'shape':<22}{'M MACs':>8}{'MAC red':>9}{'ms':>8}{'time red':>10}{'time/MAC':>10}  widths")
        for name, spec in timed.items():
            mac_red, time_red = base_macs / total_macs(spec), base_ms / ms[name]
            print(f"  {name:<22}{total_macs(spec) / 1e6:>8.1f}{mac_red:>8.2f}x{ms[name]:>8.3f}"
                  f"{time_red:>9.2f}x{time_red / mac_red:>10.2f}  {spec.widths}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
