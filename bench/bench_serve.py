"""Bounded load benchmark of the Serve app on loopback, against no-op Serve chains of the same hops.

Measures, in one Ray session on this machine:
1. the floor: no-op apps (FastAPI ingress only; ingress awaiting a head and then a tail, as the
   router does; ingress -> head -> tail nested), sequential requests, p50/p99, interleaved
   with the app's requests so that other load on the machine hits both alike;
2. the app (tiny series, variant and split fixed, link not emulated) with 1 and then 2 fixed
   tail replicas: sequential latency, the Serve overhead per request (client total minus head,
   tail and link time reported by the replicas) next to the floor, and requests/s at a fixed
   concurrency;
3. the autoscaler: tail autoscaling 1..2, load until it runs 2 replicas, then idle until it is
   back to 1, with the times.
Every phase has a fixed request count and a deadline. Run: `python bench/bench_serve.py`
(about 3-4 minutes on 2 cores; `--requests`, `--concurrency` to change the load).
"""

# No `from __future__ import annotations`: FastAPI resolves the `Request` annotations of the
# no-op routes at run time, in the scope they are defined in.

import argparse
import concurrent.futures
import http.client
import io
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # synthetic_series

VARIANT, SPLIT = "vgg11-base", "pool3"


class Client:
    """One keep-alive HTTP connection; `post` returns (wall ms, parsed JSON or None)."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def post(self, path: str, body: bytes, content_type: str = "image/png") -> tuple[float, dict | None]:
        start = time.perf_counter_ns()
        self.conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = self.conn.getresponse()
        data = response.read()
        wall_ms = (time.perf_counter_ns() - start) / 1e6
        if response.status != 200:
            raise RuntimeError(f"{path}: HTTP {response.status}: {data[:200]!r}")
        return wall_ms, (json.loads(data) if data[:1] == b"{" else None)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def _summary(values: list[float]) -> str:
    return f"p50 {_pct(values, 50):6.1f} ms  p99 {_pct(values, 99):6.1f} ms  (n={len(values)})"


def concurrent_load(port: int, path: str, body: bytes, count: int,
                    concurrency: int) -> tuple[float, list[float]]:
    """(requests/s, latencies) of `count` requests from `concurrency` keep-alive clients."""
    local = threading.local()

    def one(_):
        if not hasattr(local, "client"):
            local.client = Client(port)
        return local.client.post(path, body)[0]

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency * 2)))  # warm every connection
        start = time.perf_counter()
        latencies = list(pool.map(one, range(count)))
        elapsed = time.perf_counter() - start
    return count / elapsed, latencies


# ---- no-op chains: Ray Serve's own cost for the same hops ----------------------------------

def build_noop_apps():
    from fastapi import FastAPI, Request
    from ray import serve
    from ray.serve.handle import DeploymentHandle

    options = {"ray_actor_options": {"num_cpus": 0.05}, "max_ongoing_requests": 64}

    @serve.deployment(**options)
    class NoopTail:
        async def finish(self, frame: bytes) -> dict:
            return {"logits": [0.0] * 10, "n": len(frame)}

    @serve.deployment(**options)
    class NoopHead:
        async def run(self, pixels: bytes) -> dict:
            return {"frame": pixels[:300]}

    @serve.deployment(**options)
    class NoopChainHead:
        def __init__(self, tail: DeploymentHandle):
            self.tail = tail

        async def run(self, pixels: bytes) -> dict:
            return await self.tail.finish.remote(pixels[:300])

    ingress_only, star, chain = FastAPI(), FastAPI(), FastAPI()

    @serve.deployment(**options)
    @serve.ingress(ingress_only)
    class NoopIngress:
        @ingress_only.post("/")
        async def call(self, request: Request) -> dict:
            body = await request.body()
            return {"n": len(body)}

    @serve.deployment(**options)
    @serve.ingress(star)
    class NoopStar:
        def __init__(self, head: DeploymentHandle, tail: DeploymentHandle):
            self.head, self.tail = head, tail

        @star.post("/")
        async def call(self, request: Request) -> dict:
            body = await request.body()
            head = await self.head.run.remote(body)
            return await self.tail.finish.remote(head["frame"])

    @serve.deployment(**options)
    @serve.ingress(chain)
    class NoopChain:
        def __init__(self, head: DeploymentHandle):
            self.head = head

        @chain.post("/")
        async def call(self, request: Request) -> dict:
            return await self.head.run.remote(await request.body())

    return {
        "ingress only (0 handle hops)": NoopIngress.bind(),
        "ingress -> head, -> tail (2 hops, as the router)": NoopStar.bind(NoopHead.bind(), NoopTail.bind()),
        "ingress -> head -> tail nested (2 hops)": NoopChain.bind(NoopChainHead.bind(NoopTail.bind())),
    }


# ---- the app ----------------------------------------------------------------------------------

APP_PATH = f"/v1/classify?variant={VARIANT}&split={SPLIT}"
STAR = "ingress -> head, -> tail (2 hops, as the router)"


def deploy_app(series_dir: str, tail_replicas: int | None) -> None:

    from serve.app import deploy
    from serve.settings import AppArgs

    args = AppArgs(series_dir=series_dir, ms_per_mmac=20.0, placement="local", tail_replicas=tail_replicas)
    deploy(args)


def interleaved(port: int, paths: dict[str, str], body: bytes, rounds: int) -> dict[str, list]:
    """`rounds` sequential requests to each path, interleaved so that load from elsewhere on the
    machine affects all of them alike; values are (wall ms, answer)."""
    client = Client(port)
    for path in paths.values():
        for _ in range(10):
            client.post(path, body)
    results = {name: [] for name in paths}
    for _ in range(rounds):
        for name, path in paths.items():
            results[name].append(client.post(path, body))
    return results


def app_phase(port: int, body: bytes, tail_replicas: int, requests: int, concurrency: int,
              floor_paths: dict[str, str]) -> None:
    runs = interleaved(port, {**floor_paths, "app": APP_PATH}, body, requests)
    if tail_replicas == 1:
        print("\n== floor: no-op Serve apps, same body, interleaved with the app's requests ==")
        for name in floor_paths:
            print(f"{name:50s} {_summary([wall for wall, _ in runs[name]])}")
    floor_p50 = _pct([wall for wall, _ in runs[STAR]], 50)
    totals = [wall for wall, _ in runs["app"]]
    answers = [a for _, a in runs["app"]]
    work = [a["timings_ms"]["head"] + a["timings_ms"]["encode"] + a["timings_ms"]["decode"]
            + a["timings_ms"]["tail"] + a["timings_ms"]["link"] for a in answers]
    overhead = [t - w for t, w in zip(totals, work, strict=True)]
    own = [a["timings_ms"]["parse"] + a["timings_ms"]["plan"] for a in answers]
    print(f"\n== app, {tail_replicas} tail replica(s), {VARIANT}@{SPLIT}, link not emulated ==")
    print(f"sequential end to end      {_summary(totals)}")
    print(f"  head+tail compute        {_summary(work)}")
    print(f"  Serve overhead           {_summary(overhead)}   vs floor p50 {floor_p50:.1f} ms: "
          f"{_pct(overhead, 50) / floor_p50 - 1:+.0%}")
    print(f"  router's own share       {_summary(own)}   (image decode + plan, part of the overhead)")
    rps, latencies = concurrent_load(port, APP_PATH, body, requests * 2, concurrency)
    print(f"concurrency {concurrency}: {rps:6.1f} requests/s, {_summary(latencies)}")


def _tail_replicas() -> tuple[int, int]:
    """(replicas running, replicas in any state) of EdgeTail."""
    from ray import serve

    states = serve.status().applications["twostep-tail"].deployments["EdgeTail"].replica_states
    return states.get("RUNNING", 0), sum(states.values())


def device_frame(series_dir: str, batch: int) -> bytes:
    """A frame a device would send for `batch` images at conv1_1 (heavy work for the tail)."""
    from synthetic_series import synthetic_images

    from pipeline.series import SeriesStore
    from serve.runner import VariantRunner

    runner = VariantRunner.load(SeriesStore.open(series_dir), VARIANT)
    return runner.run_head(synthetic_images(batch, seed=7).images.numpy(), "conv1_1").frame


def autoscale_phase(series_dir: str, port: int, concurrency: int, deadline_s: float) -> None:
    from serve.settings import AppArgs

    deploy_app(series_dir, None)
    scaling = AppArgs(series_dir=series_dir).tail_autoscaling_config()
    print(f"\n== autoscaling EdgeTail: {json.dumps(scaling)} ==")
    batch = 32
    frame = device_frame(series_dir, batch)
    path = f"/v1/tail?variant={VARIANT}&split=conv1_1"
    stop = threading.Event()
    sent = [0]

    def load():
        client = Client(port)
        while not stop.is_set():
            client.post(path, frame, "application/octet-stream")
            sent[0] += 1

    threads = [threading.Thread(target=load, daemon=True) for _ in range(concurrency)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    up_s = decided_s = None
    while time.monotonic() - start < deadline_s:
        running, total = _tail_replicas()
        if decided_s is None and total >= 2:
            decided_s = time.monotonic() - start
        if running >= 2:
            up_s = time.monotonic() - start
            break
        time.sleep(0.1)
    stop.set()
    for thread in threads:
        thread.join()
    print(f"load: {concurrency} clients sending device frames of {batch} images at conv1_1 "
          f"({len(frame)} bytes; {sent[0]} requests): "
          + (f"second replica started after {decided_s:.1f} s, running after {up_s:.1f} s" if up_s
             else f"no scale-up within {deadline_s:g} s"))
    if up_s is None:
        return
    idle = time.monotonic()
    down_s = None
    while time.monotonic() - idle < deadline_s:
        if _tail_replicas()[1] <= 1:
            down_s = time.monotonic() - idle
            break
        time.sleep(0.1)
    print("idle: " + (f"2 -> 1 replica after {down_s:.1f} s" if down_s is not None
                      else f"still 2 replicas after {deadline_s:g} s")
          + f" (downscale_delay_s {scaling['downscale_delay_s']:g})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100, help="sequential requests per phase")
    parser.add_argument("--concurrency", type=int, default=4, help="clients in the throughput runs")
    parser.add_argument("--autoscale-deadline-s", type=float, default=60.0)
    args = parser.parse_args()
    from twostep.ray_env import apply_ray_env

    apply_ray_env()
    import ray
    from PIL import Image
    from ray import serve
    from synthetic_series import make_tiny_series, synthetic_images

    from twostep.ports import free_port

    start = time.monotonic()
    series_dir = str(Path(tempfile.mkdtemp(prefix="bench-serve-")) / "series")
    make_tiny_series(series_dir)
    buffer = io.BytesIO()
    Image.fromarray(synthetic_images(1, seed=5).images[0, 0].numpy()).save(buffer, format="PNG")
    body = buffer.getvalue()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    print(f"machine: {os.cpu_count()} CPUs; payload: {len(body)}-byte PNG; {args.requests} sequential "
          f"requests per measurement after 10 warm-up")

    floor_paths = {}
    for i, (name, app) in enumerate(build_noop_apps().items()):
        serve.run(app, name=f"noop{i}", route_prefix=f"/noop{i}", logging_config={"enable_access_log": False})
        floor_paths[name] = f"/noop{i}/"
    for replicas in (1, 2):
        deploy_app(series_dir, replicas)
        app_phase(port, body, replicas, args.requests, args.concurrency, floor_paths)
    for i in range(len(floor_paths)):
        serve.delete(f"noop{i}")
    autoscale_phase(series_dir, port, max(args.concurrency, 6), args.autoscale_deadline_s)
    serve.shutdown()
    ray.shutdown()
    print(f"\ntotal {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
