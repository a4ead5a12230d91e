"""`twostep bench`: strategies (a)-(f) side by side over a bandwidth x device-slowdown grid.

Stages: profile every variant here (the edge) -> test images, JPEG sizes and accuracy ->
the link (two namespaces and a shaped veth pair where permitted, else emulated) -> the edge
(Ray + Serve) and the device (a process that runs heads and sends frames) -> calibration of the
serving path's per-request bytes and time -> every grid point -> JSON, markdown, pictures.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.atomic import write_json_atomic
from pipeline.device_times import device_times_document
from pipeline.runtime import DEFAULT_RUNTIME
from pipeline.series import Manifest, SeriesStore
from pipeline.series_images import series_test_images
from twostep.bench.calibrate import Calibrated, calibrate
from twostep.bench.config import BenchConfig
from twostep.bench.strategies import baseline_choices
from twostep.bench.trace_run import bench_trace, calibration_bandwidth_mbit, replay_one, write_trace_report
from twostep.ports import free_port

Log = Callable[[str], None]
EDGE_PORT, SINK_PORT = 8000, 9009
TRACE_IMAGES = 500  # test images a trace replay cycles through
JOB_TIMEOUT_S = 3600.0  # one grid point at 0.1 Mbit/s with many requests takes minutes, not hours


# ---- preparation (this process) ----

def profile_edge(store: SeriesStore, path: Path, log: Log, runtime: str = DEFAULT_RUNTIME,
                 idle_ms: float = 0.0) -> dict:
    """Profile every variant on this CPU with one thread, as the Serve replicas run."""
    from pipeline.profile_series import profile_series
    from pipeline.profiler import save_profile

    doc = profile_series(store, runtime, threads=1, warmup=3, repeats=15, idle_ms=idle_ms)
    save_profile(path, doc)
    encode, decode = doc["codec"]["encode_ms"], doc["codec"]["decode_ms"]
    log(f"   {len(doc['variants'])} variants profiled ({runtime}, 1 thread, {idle_ms:g} ms idle before "
        f"each call) -> {path}; codec: encode "
        f"{encode[0]:.3f} ms + {1e3 * encode[1]:.4f} ms/1k elements, decode {decode[0]:.3f} ms + "
        f"{1e3 * decode[1]:.4f} ms/1k elements")
    return doc


def jpeg_stats(store: SeriesStore, images: np.ndarray, labels: np.ndarray, quality: int) -> dict:
    """Mean JPEG size, encode time (1 thread, this CPU) and the base model's accuracy on JPEGs."""
    import io

    import torch
    from PIL import Image

    from pipeline.data import DataInfo, normalize
    from twostep.bench.device_side import jpeg

    sizes, times, decoded = [], [], []
    for image in images:
        start = time.perf_counter_ns()
        data = jpeg(image, quality)
        times.append((time.perf_counter_ns() - start) / 1e6)
        sizes.append(len(data))
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("L" if image.shape[0] == 1 else "RGB"))
        decoded.append(pixels[None] if pixels.ndim == 2 else np.transpose(pixels, (2, 0, 1)))
    model, _, _ = store.load_model(store.manifest.base)
    info = DataInfo.from_dict(store.manifest.data)
    correct = 0
    with torch.inference_mode():
        batch = torch.from_numpy(np.stack(decoded))
        for start in range(0, len(batch), 500):
            x = normalize(batch[start:start + 500], info)
            correct += int((model(x).argmax(1).numpy() == labels[start:start + 500]).sum())
    return {"quality": quality, "bytes_mean": float(np.mean(sizes)),
            "encode_ms": float(np.median(times)), "accuracy": correct / len(images),
            "images": len(images)}


# ---- processes ----

class Process:
    """A child process spoken to in JSON lines (`RESULT ...` answers); a thread reads its stdout
    so that a silent or hung child times out instead of blocking the benchmark."""

    def __init__(self, name: str, popen: subprocess.Popen, stderr_path: Path):
        self.name, self.popen, self.stderr_path = name, popen, stderr_path
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.lines.put(line)
        self.lines.put(None)  # end of output: the process exited

    def _next_line(self, deadline: float, what: str) -> str:
        try:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            self.stop(timeout_s=5)
            raise RuntimeError(f"the {self.name} did not {what} in time:\n{self.stderr_tail()}") from None
        if line is None:
            raise RuntimeError(f"the {self.name} exited:\n{self.stderr_tail()}")
        return line

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self._next_line(deadline, "start").strip() != "READY":
            pass

    def ask(self, job: dict, timeout_s: float = JOB_TIMEOUT_S) -> dict:
        self.popen.stdin.write(json.dumps(job) + "\n")
        self.popen.stdin.flush()
        deadline = time.monotonic() + timeout_s
        while True:
            line = self._next_line(deadline, f"finish its {job['kind']} job")
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
                if "error" in result:
                    raise RuntimeError(f"the {self.name} failed: {result['error']}")
                return result

    def stderr_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 60.0) -> None:
        if self.popen.poll() is None:
            try:
                self.popen.stdin.close()
                self.popen.wait(timeout=timeout_s)
            except (OSError, subprocess.TimeoutExpired):
                self.popen.kill()
                self.popen.wait()


def spawn(name: str, argv: list[str], out: Path) -> Process:
    stderr_path = out / f"{name}.log"
    popen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=stderr_path.open("w"), text=True, bufsize=1)
    return Process(name, popen, stderr_path)


@dataclass
class Link:
    """The link the benchmark runs over: shaped (namespaces) or emulated (sleeps)."""

    kind: str
    shaped: object | None = None
    description: str = ""
    settings: dict = field(default_factory=dict)

    def set_rate(self, bandwidth_bps: float) -> None:
        if self.shaped is not None:
            self.shaped.set_rate(bandwidth_bps)

    def edge_argv(self, argv: list[str]) -> list[str]:
        return self.shaped.command(self.shaped.edge, argv) if self.shaped is not None else argv

    def device_argv(self, argv: list[str]) -> list[str]:
        return self.shaped.command(self.shaped.device, argv) if self.shaped is not None else argv

    @property
    def edge_host(self) -> str:
        return self.shaped.edge_ip if self.shaped is not None else "127.0.0.1"

    def close(self) -> None:
        if self.shaped is not None:
            self.shaped.close()


def open_link(mode: str, log: Log) -> Link:
    from twostep.shaped_link import ShapedLink, available

    if mode == "emulated" or (mode == "auto" and not available()):
        why = "requested" if mode == "emulated" else "network namespaces are not permitted here"
        log(f"   link: EMULATED ({why}): the device sleeps for each request's bytes at the rate")
        return Link("emulated", description="emulated: the device sleeps (request bytes + 66 B of "
                    "TCP/IP/Ethernet headers) x 8 / bandwidth before each request")
    if not available():
        raise ValueError("link 'shaped' needs root and network namespaces (ip netns); use --link emulated")
    try:
        shaped = ShapedLink(1e9).__enter__()
    except subprocess.CalledProcessError as err:
        detail = f"{' '.join(err.cmd)}: {(err.stderr or '').strip()}"
        if mode == "shaped":
            raise ValueError(f"cannot make the shaped link ({detail}); use --link emulated") from None
        log(f"   cannot make the shaped link ({detail})")
        return open_link("emulated", log)
    log(f"   link: SHAPED: namespaces {shaped.device} ({shaped.device_ip}) and {shaped.edge} "
        f"({shaped.edge_ip}), veth shaped by tc tbf both ways, burst {shaped.burst_bytes} B spent "
        "by a filler frame before each request")
    return Link("shaped", shaped, description=(
        "real: two network namespaces joined by a veth pair, tc tbf both directions at the grid "
        f"rate, one-frame burst ({shaped.burst_bytes} B) spent before each request"),
        settings={"device_if": shaped.device_if, "edge_ip": shaped.edge_ip, "mtu": shaped.mtu,
                  "burst_bytes": shaped.burst_bytes})


def check_trace_link(mode: str) -> None:
    """A trace replays on the shaped link only: ValueError naming the way out where there is none."""
    from twostep.shaped_link import available

    if mode == "emulated" or not available():
        why = "not --link emulated" if mode == "emulated" else "which this machine does not permit"
        raise ValueError(f"--trace replays the trace on the shaped link (root, network namespaces), {why}; "
                         "without one, replay it on `twostep serve --emulate-link` (PUT /v1/link "
                         '{"trace": ...}) or with bench/bench_trace_live.py')


# ---- the run ----

def run_bench(config: BenchConfig, progress: bool = True, log: Log = print) -> dict:
    """All stages; returns what `twostep.bench.report` needs (also written as bench.json)."""

    from twostep.bench.report import write_report

    started = time.perf_counter()
    trace = bench_trace(config) if config.trace else None  # a bad trace fails before any work
    if trace is not None:
        check_trace_link(config.link)
    grid = trace is None or config.trace_grid
    median = calibration_bandwidth_mbit(trace) if trace is not None else None  # Mbit/s
    bandwidths = config.bandwidths_mbit if grid else (median,)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    store = SeriesStore.open(config.series)
    manifest = store.manifest
    base = manifest.base_variant
    base_accuracy = base.accuracy
    floor = max(0.0, base_accuracy - config.max_loss)
    log(f"== series {store.directory}: {len(store.ids())} variants; base {base.id} test accuracy "
        f"{base_accuracy:.4f}; twostep's accuracy floor {floor:.4f}")
    log("== [1/5] profile every variant here (the edge)")
    edge_profile = profile_edge(store, out / "profile.edge.json", log, config.runtime,
                                config.profile_idle_ms)
    log("== [2/5] test images, JPEG sizes and accuracy")
    kept = max(config.requests, TRACE_IMAGES if trace is not None else 1)
    images, labels = series_test_images(manifest, max(config.accuracy_images, kept))
    np.save(out / "images.npy", images[:kept])
    np.save(out / "labels.npy", labels[:kept])
    jpeg = jpeg_stats(store, images[: config.accuracy_images], labels[: config.accuracy_images],
                      config.jpeg_quality)
    log(f"   JPEG q{jpeg['quality']}: {jpeg['bytes_mean']:.0f} B mean, base accuracy on JPEGs "
        f"{jpeg['accuracy']:.4f} over {jpeg['images']} images")
    raw_bytes = float(images[0].size)
    log("== [3/5] link, edge and device")
    link = open_link(config.link, log)
    processes: list[Process] = []
    try:
        edge, device = start_edge_and_device(link, store, out, config, floor, processes, log)
        log("== [4/5] calibrate the serving path, then every grid point")
        cal = calibrate(device, link, manifest, edge_profile, config, bandwidths, floor, log)
        costs_at, device_ms, calibration = cal.costs_at, cal.device_ms, cal.document
        grid = [(b, s) for b in bandwidths for s in config.slowdowns] if grid else []
        points = measure_grid(device, link, manifest, edge_profile, cal, grid, jpeg, raw_bytes,
                              floor, config, progress, log)
        traced = []
        if trace is not None:
            at = min(bandwidths, key=lambda b: abs(np.log(b / median)))
            log(f"== trace {trace.name}: {trace.duration_s:.0f} s at {config.fps:g} requests/s per "
                f"slowdown (device calls fitted at {at:g} Mbit/s, the trace's median rate)")
            for slowdown in config.slowdowns:
                traced.append(replay_one(device, link.set_rate, trace, config, slowdown, manifest,
                                         edge_profile, costs_at[at], device_ms(at, slowdown), jpeg, floor,
                                         log))
    finally:
        for process in reversed(processes):
            process.stop()
        link.close()
    log("== [5/5] results")
    summaries = write_trace_report(trace, config, traced, out, log) if trace is not None else None
    document = {
        "config": config.model_dump(mode="json"), "series": str(store.directory),
        "link": {"kind": link.kind, "description": link.description, **link.settings},
        "device": {"emulation": "each head / JPEG encoding takes slowdown x the device thread's "
                                "CPU time for it (padded by sleeping; never less than its wall "
                                "time); 1 torch thread"},
        "edge": "Ray Serve on this machine, 1 tail replica, 1 torch thread",
        "base": base.id, "step1": manifest.step1, "accuracy_floor": floor,
        "base_test_accuracy": base_accuracy, "max_loss": config.max_loss, "jpeg": jpeg,
        "raw_bytes": raw_bytes,
        "calibration": {k: v for k, v in calibration.items() if k != "rows"},
        "points": points, "wall_seconds": time.perf_counter() - started,
        **({"traces": summaries} if summaries is not None else {}),
    }
    if not grid:
        write_json_atomic(out / "bench.json", document)
        return document
    return write_report(document, store, out, log)


def start_edge_and_device(link: Link, store: SeriesStore, out: Path, config: BenchConfig, floor: float,
                          processes: list[Process], log: Log) -> tuple[Process, Process]:
    """The edge (Ray Serve, in the edge namespace) and the device process, each appended to
    `processes` as soon as it runs (the caller stops them)."""
    port = EDGE_PORT if link.shaped is not None else free_port()
    edge = spawn("edge", link.edge_argv([
        sys.executable, "-m", "twostep.bench.edge_side", "--series", str(store.directory),
        "--host", link.edge_host, "--port", str(port),
        "--edge-profile", str((out / "profile.edge.json").resolve()),
        "--accuracy-floor", repr(floor), "--sink-port", str(SINK_PORT if link.shaped else 0),
        "--ingress", config.ingress, "--runtime", config.runtime]), out)
    processes.append(edge)
    edge.wait_ready(config.startup_timeout_s)
    setup = {"url": f"http://{link.edge_host}:{port}", "images": str((out / "images.npy").resolve()),
             "labels": str((out / "labels.npy").resolve()), "jpeg_quality": config.jpeg_quality,
             "runtime": config.runtime, "throttle": link.shaped is None,
             "transport": config.transport}
    if link.shaped is not None:
        setup.update(interface=link.shaped.device_if, prime_host=link.shaped.edge_ip,
                     prime_port=SINK_PORT, burst_bytes=link.shaped.burst_bytes)
    write_json_atomic(out / "device_setup.json", setup)
    device = spawn("device", link.device_argv([
        sys.executable, "-m", "twostep.bench.device_side", str((out / "device_setup.json").resolve())]),
        out)
    processes.append(device)
    device.wait_ready(config.startup_timeout_s)
    log(f"   edge at {setup['url']} (Ray Serve, 1 tail replica); device process ready")
    return edge, device


def measure_grid(device: Process, link: Link, manifest: Manifest, edge_profile: dict, cal: Calibrated,
                 grid: list[tuple[float, float]], jpeg: dict, raw_bytes: float, floor: float,
                 config: BenchConfig, progress: bool, log: Log) -> list[dict]:
    """Every grid point (Mbit/s, slowdown): strategies (a)-(e) as the cost model chose them and
    the router's (f), each measured by the device over the link at that rate."""
    from tqdm.auto import tqdm

    costs, costs_at, device_ms = cal.costs, cal.costs_at, cal.device_ms
    choices = {(b, s): baseline_choices(manifest, edge_profile, s, costs_at[b], b * 1e6, raw_bytes,
                                        jpeg["bytes_mean"], jpeg["encode_ms"], device_ms(b, s))
               for b, s in grid}
    plan_points = [{"bandwidth_bps": b * 1e6, "slowdown": costs_at[b].device_slowdown(s),
                    "overhead_ms": costs_at[b].device_overhead(s), "rtt_ms": costs.rtt_ms(b * 1e6),
                    "accuracy_floor": floor, "device_ms": device_times_document(device_ms(b, s))}
                   for b, s in grid]
    if not grid:
        return []
    fetched = device.ask({"kind": "prefetch", "points": plan_points, "executions": [
        e.to_dict() for point in choices.values() for e, _ in point.values()]})
    log(f"   router plans for {len(grid)} points and {fetched['heads']} heads fetched at 1 Gbit/s")
    points = []
    bar = tqdm(grid, desc="grid", disable=not progress, unit="point")
    current_rate = None
    for (mbit, slowdown), plan in zip(bar, fetched["plans"], strict=True):
        bps = mbit * 1e6
        if bps != current_rate:
            link.set_rate(bps)
            current_rate = bps
        bar.set_postfix(bw=f"{mbit:g}Mbit/s", slowdown=f"{slowdown:g}x")
        point = choices[(mbit, slowdown)]
        executions = {e.key: e.to_dict() for e, _ in point.values()}
        result = device.ask({"kind": "point", "bandwidth_bps": bps, "slowdown": slowdown,
                             "plan": plan, "requests": config.requests, "executions": executions})
        points.append({"bandwidth_mbit": mbit, "slowdown": slowdown, "rtt_ms": costs.rtt_ms(bps),
                       "predicted": {k: {"execution": e.key, **p} for k, (e, p) in point.items()},
                       **result})
    bar.close()
    return points
