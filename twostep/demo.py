"""`twostep demo`: the whole system on the embedded default, stage by stage.

1 train (or reuse a cached base model) -> 2 2-step pruning on Ray Tune -> 3 profile every variant
-> 4 serve the series on Ray Serve and send real test images at several emulated bandwidths ->
5 a results table (markdown + JSON) and pictures in the run directory.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.atomic import write_json_atomic
from pipeline.base_model import train_base
from pipeline.checkpoint import CheckpointError, read_metadata
from pipeline.config import TrainConfig
from pipeline.profile_paths import device_profile_of, series_edge_profile
from pipeline.profiler import (
    derive_profile,
    save_profile,
)
from pipeline.runtime import DEFAULT_RUNTIME
from pipeline.series import Manifest, SeriesStore
from twostep.demo_config import DemoConfig
from twostep.ports import free_port

Log = Callable[[str], None]


class Stages:
    """Prints a numbered banner per stage with its wall time."""

    def __init__(self, total: int, log: Log):
        self.total, self.log, self.index = total, log, 0
        self.times: dict[str, float] = {}

    def run(self, title: str, fn: Callable[[], object]) -> object:
        self.index += 1
        self.log(f"\n== [{self.index}/{self.total}] {title} ==")
        start = time.perf_counter()
        result = fn()
        self.times[title] = time.perf_counter() - start
        self.log(f"   done in {self.times[title]:.0f} s")
        return result


def cached_base(config: TrainConfig) -> bool:
    """True when `config.out` holds a model trained with exactly this config."""
    try:
        _, meta = read_metadata(config.out)
    except CheckpointError:
        return False
    return meta.get("train") == config.model_dump(mode="json")


def train_stage(config: TrainConfig, progress: bool, log: Log) -> dict:
    if cached_base(config):
        _, meta = read_metadata(config.out)
        log(f"   reusing {config.out} (test accuracy {meta['test_accuracy']:.4f})")
        return {"test_accuracy": meta["test_accuracy"], "cached": True}
    _, _, metrics = train_base(config, progress=progress, log=log)
    return {"test_accuracy": metrics["test_accuracy"], "cached": False}


def prune_stage(config: DemoConfig, progress: bool, log: Log) -> SeriesStore:
    from tune.launch import launch_pruning
    from tune.plan import TrialResources

    return launch_pruning(config.prune, steps="both", address=config.demo.ray_address,
                          progress=progress, resources=TrialResources(cpus=config.demo.cpus_per_trial,
                                                           gpus=config.demo.gpus_per_trial),
                          log=log)


def profile_stage(store: SeriesStore, slowdown: float, log: Log,
                  runtime: str = DEFAULT_RUNTIME) -> tuple[Path, Path]:
    """Measure every variant on this machine (the edge) and derive the device by `slowdown`."""
    from pipeline.profile_series import profile_series

    edge = profile_series(store, runtime, threads=1, warmup=3, repeats=10)
    edge_path = series_edge_profile(store.directory)
    device_path = device_profile_of(edge_path)
    save_profile(edge_path, edge)
    save_profile(device_path, derive_profile(edge, slowdown))
    log(f"   {len(edge['variants'])} variants profiled ({runtime}); device = {slowdown:g} x this machine")
    return edge_path, device_path


def start_app(series_dir: Path, accuracy_floor: float, slowdown: float, port: int,
              owns_cluster: bool = True) -> tuple[str, dict]:
    """Start the Serve apps on 127.0.0.1 (Ray must be running); returns their base URL and the
    series reference (to unpublish it when the apps are deleted)."""
    from serve.app import deploy
    from serve.process.startup import start_http
    from serve.settings import AppArgs

    port = port or free_port()
    # a retry shuts Serve down: only on a cluster the demo owns
    _, port = start_http("127.0.0.1", port, attempts=3 if owns_cluster else 1)
    args = AppArgs(series_dir=str(series_dir.resolve()), accuracy_floor=accuracy_floor,
                   slowdown=slowdown, link_bandwidth_bps=1e6, probe_interval_s=1.0, emulate_link=True)
    series = deploy(args)
    return f"http://127.0.0.1:{port}", series


def _http(url: str, method: str = "GET", body: bytes | None = None, content_type: str = "",
          timeout: float = 60.0) -> dict:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method=method)
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        raise RuntimeError(f"{method} {url} answered {err.code}: {err.read()[:300]!r}") from None


TRACE_RTT_MS = 20.0  # the round trip of the emulated link while a trace is replayed

# The lines of the latency picture: the paper's baselines and twostep, all measured through the
# same serving path (forced choices through /v1/classify; twostep is the router's own choice).
LINES = ("all on device", "raw input to edge", "best split, original", "best split, step 1", "twostep")


def line_candidates(store: SeriesStore, edge_path: Path, device_path: Path,
                    accuracy_floor: float) -> dict[str, list]:
    """The candidates of each line: all on device, raw input, best split of the original and
    of the step-1 model (Neurosurgeon-style: every split point, the input and the output
    included, as (d) and (e) of `twostep bench`), and twostep (the whole series)."""
    from pipeline.profiler import load_profile
    from pipeline.selection import baseline_candidates, candidates_from_series

    manifest = store.manifest
    device, edge = load_profile(device_path), load_profile(edge_path)
    every = candidates_from_series(manifest, device, edge)
    base, step1 = manifest.base, manifest.step1
    return {
        "all on device": [c for c in every if c.variant_id == base and c.split == "output"],
        "raw input to edge": [c for c in every if c.variant_id == base and c.split == "input"],
        "best split, original": [c for c in every if c.variant_id == base],
        "best split, step 1": [c for c in every if c.variant_id == step1],
        "twostep": [c for c in every + baseline_candidates(manifest, device, edge)
                    if c.accuracy >= accuracy_floor],
    }


def served_candidates(store: SeriesStore, edge_path: Path, device_path: Path) -> list:
    """Every (variant, split) the router may choose, with the demo's profiles."""
    from pipeline.profiler import load_profile
    from pipeline.selection import baseline_candidates, candidates_from_series

    device, edge = load_profile(device_path), load_profile(edge_path)
    return (candidates_from_series(store.manifest, device, edge)
            + baseline_candidates(store.manifest, device, edge))


def replay_trace(url: str, settings, candidates: list, floor: float, images, log: Log) -> dict:
    """Replay `settings.trace` live on the served series (`twostep.trace_live`)."""
    from pipeline.traces import load_trace
    from twostep.trace_live import replay, segment, warm_up

    trace = segment(load_trace(settings.trace), settings.trace_start_s, settings.trace_seconds)
    log(f"   replaying {trace.name} on the emulated link: {settings.trace_fps:g} images/s for "
        f"{trace.duration_s:g} s")
    warm_up(url, candidates, floor, images[0])
    rows = replay(url, trace, images, settings.trace_fps, TRACE_RTT_MS, link="trace")
    return {"trace": trace, "rows": rows, "candidates": candidates}


def trace_report(replayed: dict, candidates: list, floor: float, settings, picture: Path) -> dict:
    """The replay's choices priced on the true trace, against the oracle; the picture."""
    from pipeline.plots import plot_trace
    from serve.trace_replay import recovery_delays, replay_oracle
    from twostep.trace_live import price

    trace, rows = replayed["trace"], replayed["rows"]
    live = price(rows, trace, candidates, TRACE_RTT_MS)
    oracle = replay_oracle(trace, candidates, floor, rtt_ms=TRACE_RTT_MS, starts=live.starts_s)
    plot_trace(trace, live, oracle, picture, settings.trace_fps)
    seconds = len(rows) / settings.trace_fps
    return {"name": trace.name, "live": live.summary(seconds), "oracle": oracle.summary(seconds),
            "recovery_s": recovery_delays(live, oracle), "picture": str(picture), "rows": rows}


def best_of(candidates: list, bps: float):
    """The cost model's best candidate at `bps` and its breakdown."""
    from pipeline.cost import Link
    from pipeline.selection import CandidateTable

    decision = CandidateTable.from_candidates(candidates).select(Link(bps), accuracy_floor=0.0)
    return decision.best, decision.breakdown


def forced_choices(lines: dict[str, list], bandwidths_bps: tuple[float, ...]
                   ) -> dict[float, dict[str, tuple[str, str]]]:
    """Per bandwidth, the (variant, split) each baseline line runs (twostep: the router's own)."""
    choices: dict[float, dict[str, tuple[str, str]]] = {}
    for bps in bandwidths_bps:
        choices[bps] = {}
        for line, candidates in lines.items():
            if line != "twostep" and candidates:
                best, _ = best_of(candidates, bps)
                choices[bps][line] = (best.variant_id, best.split)
    return choices


def measure_lines(url: str, images, labels, choices: dict[float, dict[str, tuple[str, str]]],
                  requests: int, log: Log, progress: bool = True) -> list[dict]:
    """Classify real test images over the emulated link at each bandwidth, for every line in
    turn (one request of each per round, so drift hits all alike); one row per request."""
    from urllib.parse import urlencode

    from tqdm.auto import tqdm

    rows = []
    shape = ",".join(str(d) for d in images.shape[1:])
    for bps, forced in choices.items():
        mbit = bps / 1e6
        _http(f"{url}/v1/link", "PUT", json.dumps({"bandwidth_bps": bps, "rtt_ms": 0}).encode(),
              "application/json")
        lines = [*forced, "twostep"]
        # The first rounds teach the router's estimator this link; they are warm-up.
        warmup = 4
        for i in tqdm(range(warmup + requests), desc=f"{mbit:g} Mbit/s", leave=False,
                      disable=not progress):
            image = images[i % len(images)]
            for line in lines:
                # The device reports the uplink it measures, as `twostep device` does; without it
                # the router would learn the rate only from frames, and none flow while it runs
                # all on the device.
                query = {"shape": shape, "uplink_bps": int(bps)}
                if line in forced:
                    query.update(variant=forced[line][0], split=forced[line][1])
                answer = _http(f"{url}/v1/classify?{urlencode(query)}", "POST",
                               image.numpy().tobytes(), "application/octet-stream")
                if i < warmup:
                    continue
                rows.append({
                    "bandwidth_mbit": mbit, "line": line, "variant": answer["variant"],
                    "split": answer["split"], "strategy": answer["strategy"],
                    "bytes_sent": answer["bytes_sent"],
                    "correct": answer["prediction"] == int(labels[i % len(labels)]),
                    "measured_ms": answer["timings_ms"]["total"],
                    "planned_ms": answer["planned_ms"]["total"],
                    "link_ms": answer["timings_ms"].get("link", 0.0),
                })
        last = [r for r in rows if r["line"] == "twostep"][-1]
        log(f"   {mbit:g} Mbit/s: twostep chose {last['variant']} @ {last['split']}, "
            f"{last['bytes_sent']} B")
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per bandwidth, twostep's requests: the choice(s), bytes, accuracy, latency p50/p95, and
    the p50 of every baseline line measured beside it."""
    import numpy as np

    table = []
    for mbit in sorted({r["bandwidth_mbit"] for r in rows}):
        group = [r for r in rows if r["bandwidth_mbit"] == mbit and r["line"] == "twostep"]
        choices = sorted({f"{r['variant']}@{r['split']}" for r in group})
        measured = np.array([r["measured_ms"] for r in group])
        lines = {line: float(np.percentile([r["measured_ms"] for r in rows
                                            if r["bandwidth_mbit"] == mbit and r["line"] == line], 50))
                 for line in LINES if any(r["bandwidth_mbit"] == mbit and r["line"] == line for r in rows)}
        table.append({
            "bandwidth_mbit": mbit, "choice": ", ".join(choices),
            "bytes_sent": float(np.mean([r["bytes_sent"] for r in group])),
            "accuracy": float(np.mean([r["correct"] for r in group])),
            "measured_p50_ms": float(np.percentile(measured, 50)),
            "measured_p95_ms": float(np.percentile(measured, 95)),
            "planned_ms": float(np.mean([r["planned_ms"] for r in group])),
            "requests": len(group),
            "lines_p50_ms": lines,
        })
    return table


def markdown_table(summary: list[dict], manifest: Manifest) -> str:
    """twostep's choices, then every line's measured p50 side by side."""
    variants = manifest.by_id()
    lines = ["| bandwidth | choice (variant @ split) | test acc of choice | bytes sent | "
             "measured p50 / p95 ms | cost model ms (no serving overhead) |", "|---|---|---|---|---|---|"]
    for row in summary:
        first = row["choice"].split(", ")[0].split("@")[0]
        accuracy = variants[first].accuracy if first in variants else float("nan")
        lines.append(f"| {row['bandwidth_mbit']:g} Mbit/s | {row['choice']} | {accuracy:.4f} | "
                     f"{row['bytes_sent']:.0f} | "
                     f"{row['measured_p50_ms']:.1f} / {row['measured_p95_ms']:.1f} | "
                     f"{row['planned_ms']:.1f} |")
    names = [name for name in LINES if any(name in row["lines_p50_ms"] for row in summary)]
    lines += ["", "Measured p50 ms of every line, each request through the same serving path:", "",
              "| bandwidth | " + " | ".join(names) + " | twostep vs best split, original |",
              "|---|" + "---|" * (len(names) + 1)]
    for row in summary:
        p50 = row["lines_p50_ms"]
        ratio = (f"{p50['best split, original'] / p50['twostep']:.2f}x"
                 if "best split, original" in p50 and "twostep" in p50 else "-")
        lines.append(f"| {row['bandwidth_mbit']:g} Mbit/s | "
                     + " | ".join(f"{p50[n]:.1f}" if n in p50 else "-" for n in names)
                     + f" | {ratio} |")
    return "\n".join(lines)


def predicted_curves(lines: dict[str, list]) -> dict[str, list[tuple[float, float]]]:
    """Cost-model latency of each line against bandwidth (no serving overhead: for
    results.json; the picture shows the measured lines)."""
    return {line: [(bps, best_of(candidates, bps)[1].total_ms)
                   for bps in (1e5, 2.5e5, 5e5, 1e6, 2e6, 5e6, 1e7, 1e8)]
            for line, candidates in lines.items() if candidates}


def run_demo(config: DemoConfig, progress: bool = True, log: Log = print) -> dict:
    """All stages; returns the paths of what was produced and the summary table."""
    import os

    import ray
    from ray import serve

    from pipeline.data import load_splits
    from pipeline.plots import plot_accuracy_vs_bytes, plot_latency_vs_bandwidth, plot_split_sizes
    from pipeline.report import format_series_table
    from tune.launch import init_ray
    from twostep.ray_env import OWN_SERVE_ENV, apply_ray_env

    apply_ray_env()
    # Serve's own INFO lines (apps deployed, ready, shut down) are not the demo's story
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    if config.demo.trace:  # a bad trace file is said now, not after training and pruning
        from pipeline.traces import load_trace
        from twostep.trace_live import segment

        segment(load_trace(config.demo.trace), config.demo.trace_start_s, config.demo.trace_seconds)
    out = Path(config.demo.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", {"train": config.train.model_dump(mode="json"),
                                     "prune": config.prune.model_dump(mode="json"),
                                     "demo": config.demo.model_dump(mode="json")})
    stages = Stages(5, log)
    started_ray = False
    # Only a local session the demo starts is its own to shut down; on a cluster it joins (an
    # address, or a session already running) it removes just its apps and actors.
    owns_cluster = (not ray.is_initialized()
                    and config.demo.ray_address in (None, "", "local")
                    and not os.environ.get("RAY_ADDRESS"))
    served: dict = {}
    if owns_cluster:  # the demo shuts its own Serve down when done
        apply_ray_env(None, OWN_SERVE_ENV)
    try:
        stages.run("train the base model", lambda: train_stage(config.train, progress, log))

        def prune():
            nonlocal started_ray
            if owns_cluster:
                from serve.process.ingress import apply_ingress

                log(f"   {apply_ingress(config.demo.ingress)[1]}")
            started_ray = init_ray(config.demo.ray_address)
            return prune_stage(config, progress, log)

        store: SeriesStore = stages.run("2-step pruning on Ray Tune", prune)
        log(format_series_table(store.manifest, config.prune.step1_budget))
        edge_path, device_path = stages.run(
            "profile every variant", lambda: profile_stage(store, config.demo.slowdown, log))
        floor = store.manifest.base_variant.accuracy - config.demo.accuracy_drop

        lines = line_candidates(store, edge_path, device_path, floor)

        def serve_and_measure():
            url, served["series"] = start_app(store.directory, floor, config.demo.slowdown,
                                              config.demo.port, owns_cluster)
            log(f"   serving at {url} (accuracy floor {floor:.4f})")
            test = load_splits(config.prune.dataset, config.prune.data_dir, config.prune.val_fraction,
                               test_subset=max(64, config.demo.requests_per_bandwidth + 4),
                               seed=config.prune.seed).test
            choices = forced_choices(lines, config.demo.bandwidths)
            measured = measure_lines(url, test.images, test.labels, choices,
                                     config.demo.requests_per_bandwidth, log, progress)
            if config.demo.trace:
                candidates = served_candidates(store, edge_path, device_path)
                served["trace"] = replay_trace(url, config.demo, candidates, floor, test.images, log)
            return measured

        rows = stages.run("serve on Ray Serve and send requests", serve_and_measure)

        def report():
            summary = summarize(rows)
            curves = predicted_curves(lines)
            measured = {line: [(r["bandwidth_mbit"] * 1e6, r["lines_p50_ms"][line]) for r in summary
                               if line in r["lines_p50_ms"]] for line in LINES}
            pictures = {
                "split_sizes": str(plot_split_sizes(store.manifest, out / "split_sizes.png",
                                                    config.prune.step1_budget)),
                "accuracy_vs_bytes": str(plot_accuracy_vs_bytes(store.manifest,
                                                                out / "accuracy_vs_bytes.png")),
                "latency_vs_bandwidth": str(plot_latency_vs_bandwidth(
                    {line: points for line, points in measured.items() if points},
                    out / "latency_vs_bandwidth.png",
                    f"All lines measured through Ray Serve (p50); device = "
                    f"{config.demo.slowdown:g}x edge; floor {floor:.3f}")),
            }
            trace_result = None
            if "trace" in served:
                trace_result = trace_report(served["trace"], served["trace"]["candidates"], floor,
                                            config.demo, out / "trace.png")
                pictures["trace"] = trace_result["picture"]
            table = markdown_table(summary, store.manifest)
            (out / "results.md").write_text(table + "\n")
            write_json_atomic(out / "results.json", {"summary": summary, "requests": rows,
                                              "predicted": curves, "pictures": pictures,
                                              "trace": trace_result, "stage_seconds": stages.times})
            return table, pictures

        table, pictures = stages.run("results table and pictures", report)
    finally:
        if owns_cluster and started_ray:
            serve.shutdown()
            ray.shutdown()
        elif ray.is_initialized():
            # a cluster we joined: remove only our apps and their actors, others keep running
            from serve.app import delete_apps

            delete_apps("twostep", served.get("series"))
            if started_ray:
                ray.shutdown()  # disconnects this driver; the cluster stays
    log("\n" + table)
    for name, path in pictures.items():
        log(f"picture ({name}): {path}")
    total = sum(stages.times.values())
    log(f"demo finished in {total:.0f} s; results in {out}/results.md and results.json")
    return {"out": str(out), "series": str(store.directory), "table": table, "pictures": pictures,
            "stage_seconds": stages.times}
