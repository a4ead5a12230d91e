"""Whole-model call time, batch 1, one thread, and each variant's speed-up over the base next to
its MAC reduction: how much of a pruned model's MAC saving a device call actually sees.

Run: `python bench/bench_inference_form.py SERIES_DIR [--runtime torch|onnxruntime]
[--variants ID ...] [--rounds 7] [--calls 50] [--idle-ms 0] [--align N]`.

With `--runtime torch` (the default) each variant runs as trained and in its inference form
(BatchNorm folded, `pipeline.models.inference`); with `--runtime onnxruntime` as the device runs
it: the ONNX graph of the whole model from uint8 pixels to logits (`pipeline.onnx_graphs`, split
`output`), ONNX Runtime with every graph optimisation. `--idle-ms` waits that long before every
call (the serving path's idle gap between requests) instead of calling back to back. Prints the
issue-14 target for the series' step-1 model: time reduction >= 0.7 x MAC reduction.

`--align N` adds, for every pruned variant, a model of the same architecture with each width
rounded up to a multiple of N (at most the base's width), random weights: what a runtime's
blocked kernels (channels in multiples of 8 or 16) make of the odd widths pruning leaves.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pipeline.data import DataInfo
from pipeline.models import ArchSpec, build
from pipeline.models.inference import inference_form
from pipeline.runtime import DEFAULT_RUNTIME, RUNTIMES
from pipeline.series import SeriesStore
from pipeline.split import total_macs

TARGET = 0.7  # issue 14: the step-1 model's time reduction >= 0.7 x its MAC reduction


def _ms_per_call(call, x, calls: int, idle_ms: float) -> float:
    if idle_ms <= 0:
        start = time.perf_counter()
        for _ in range(calls):
            call(x)
        return (time.perf_counter() - start) / calls * 1e3
    times = []
    for _ in range(calls):
        time.sleep(idle_ms / 1e3)
        start = time.perf_counter()
        call(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def aligned(spec: ArchSpec, base: ArchSpec, multiple: int) -> ArchSpec:
    """`spec` with every width rounded up to a multiple of `multiple`, at most the base's width."""
    return spec.with_widths([min(b, -(-w // multiple) * multiple)
                             for w, b in zip(spec.widths, base.widths, strict=True)])


def _calls(store: SeriesStore, model: torch.nn.Module, spec: ArchSpec, runtime: str) -> dict[str, tuple]:
    """form -> (call, input) of one model for `runtime`."""
    shape = (1, spec.in_channels, spec.input_size, spec.input_size)
    if runtime == "torch":
        x = torch.randn(*shape)
        return {"as trained": (model.eval(), x), "inference form": (inference_form(model), x)}
    from pipeline.call_time import onnx_model_call

    return {"onnxruntime": onnx_model_call(model, spec, DataInfo.from_dict(store.manifest.data))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("series")
    parser.add_argument("--runtime", choices=RUNTIMES, default=DEFAULT_RUNTIME)
    parser.add_argument("--variants", nargs="*", help="default: the base and every step-1 variant")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds; the median is kept")
    parser.add_argument("--calls", type=int, default=50, help="calls per round")
    parser.add_argument("--idle-ms", type=float, default=0.0, help="idle before each call (0: back to back)")
    parser.add_argument("--align", type=int, default=0, metavar="N",
                        help="also time each pruned variant with its widths rounded up to a multiple of N")
    args = parser.parse_args()
    if args.align < 0:
        parser.error(f"--align must be >= 1 (0: off), got {args.align}")
    torch.set_num_threads(1)
    store = SeriesStore.open(args.series)
    base, step1 = store.manifest.base, store.manifest.step1
    ids = list(args.variants or [base] + [v.id for v in store.manifest.step(1)])
    calls, macs, specs = {}, {}, {}
    for vid in ids:
        model, specs[vid], _ = store.load_model(vid)
        for form, pair in _calls(store, model, specs[vid], args.runtime).items():
            calls[(vid, form)] = pair
        macs[vid] = store.get(vid).macs
    if args.align:
        base_spec = specs[base] if base in specs else store.load_model(base)[1]
        for vid in [v for v in ids if v != base]:
            spec = aligned(specs[vid], base_spec, args.align)
            row = f"{vid} x{args.align}"
            for form, pair in _calls(store, build(spec).eval(), spec, args.runtime).items():
                calls[(row, form)] = pair
            macs[row] = total_macs(spec)
            ids.append(row)
    forms = list(dict.fromkeys(form for _, form in calls))
    last = forms[-1]  # the form a device runs: folded (torch) or the graph (onnxruntime)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    with torch.inference_mode():
        for call, x in calls.values():
            _ms_per_call(call, x, 10, 0.0)
        for _ in range(args.rounds):  # interleaved, so drifting load hits every model alike
            for key, (call, x) in calls.items():
                times[key].append(_ms_per_call(call, x, args.calls, args.idle_ms))
    median = {key: statistics.median(values) for key, values in times.items()}
    idle = "back to back" if args.idle_ms <= 0 else f"{args.idle_ms:g} ms idle before each"
    print(f"{args.runtime}, batch 1, 1 thread, median of {args.rounds} rounds x {args.calls} calls ({idle})")
    print(f"{'variant':26} {'MACs':>9} {'MAC red':>8} " + " ".join(f"{f:>15}" for f in forms)
          + f" {'time red':>9} {'time/MAC red':>12}")
    for vid in ids:
        mac_red = macs[base] / macs[vid]
        time_red = median[(base, last)] / median[(vid, last)]
        print(f"{vid:26} {macs[vid] / 1e6:8.2f}M {mac_red:7.2f}x "
              + " ".join(f"{median[(vid, f)]:13.3f}ms" for f in forms)
              + f" {time_red:8.2f}x {time_red / mac_red:11.2f}")
    if step1 in ids and step1 != base:
        mac_red = macs[base] / macs[step1]
        time_red = median[(base, last)] / median[(step1, last)]
        verdict = "met" if time_red >= TARGET * mac_red else "NOT met"
        print(f"target: step-1 time reduction >= {TARGET} x MAC reduction: {time_red:.2f}x vs "
              f"{TARGET} x {mac_red:.2f}x = {TARGET * mac_red:.2f}x: {verdict} "
              f"({time_red / mac_red:.2f} of the MAC reduction)")


if __name__ == "__main__":
    main()
