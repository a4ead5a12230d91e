"""Whole-model forward time, batch 1, one thread: each variant as trained vs its inference form
(BatchNorm folded, `pipeline.models.inference`), and each variant's speed-up over the base.

Run: `python bench/bench_inference_form.py SERIES_DIR [--variants ID ...] [--rounds 7]`.
Prints the MAC reduction next to the time reduction, i.e. how much of a pruned model's MAC
saving a batch-1 CPU call actually sees.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pipeline.models.inference import inference_form
from pipeline.series import SeriesStore
from pipeline.split import total_macs


def _ms_per_call(model: torch.nn.Module, x: torch.Tensor, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        model(x)
    return (time.perf_counter() - start) / calls * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("series")
    parser.add_argument("--variants", nargs="*", help="default: the base and every step-1 variant")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds; the median is kept")
    parser.add_argument("--calls", type=int, default=100, help="calls per round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    store = SeriesStore.open(args.series)
    base = store.manifest["base"]
    ids = args.variants or [base] + [v["id"] for v in store.variants if v["step"] == 1]
    models, macs = {}, {}
    for vid in ids:
        model, spec, _ = store.load_model(vid)
        x = torch.randn(1, spec.in_channels, spec.input_size, spec.input_size)
        models[(vid, "as trained")] = model.eval()
        models[(vid, "inference form")] = inference_form(model)
        macs[vid] = total_macs(spec)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in models}
    with torch.inference_mode():
        for model in models.values():
            _ms_per_call(model, x, 20)
        for _ in range(args.rounds):  # interleaved, so drifting load hits every model alike
            for key, model in models.items():
                times[key].append(_ms_per_call(model, x, args.calls))
    median = {key: statistics.median(values) for key, values in times.items()}
    print(f"batch 1, 1 thread, median of {args.rounds} rounds x {args.calls} calls")
    print(f"{'variant':24} {'MACs':>8} {'MAC red':>8} {'as trained':>11} {'inference':>10} "
          f"{'fold gain':>9} {'time red':>9}")
    for vid in ids:
        trained, folded = median[(vid, "as trained")], median[(vid, "inference form")]
        print(f"{vid:24} {macs[vid] / 1e6:7.2f}M {macs[base] / macs[vid]:7.2f}x {trained:9.3f}ms "
              f"{folded:8.3f}ms {trained / folded:8.2f}x "
              f"{median[(base, 'inference form')] / folded:8.2f}x")


if __name__ == "__main__":
    main()
