"""The device of `twostep bench`: a process that serves requests the way each strategy says.

    python -m twostep.bench.device_side SETUP.json

It runs in the device network namespace of a shaped link (or beside the edge, with the link
emulated), reads one JSON job per line on stdin and answers each with one `RESULT {json}` line on
stdout. Jobs: `calibrate` (the per-request bytes and fixed time of the serving path) and `point`
(every execution of one bandwidth x slowdown grid point, `requests` times each, interleaved).

The device is `slowdown` times slower than this CPU: each piece of device work (head, JPEG
encoding) takes `slowdown` times the CPU time its thread spent on it (`device_time`), padded by
sleeping. The thread's CPU time, not the wall time, because the edge's Ray processes share this
machine's cores: their preemption of the device process is not the device's work, and a slowdown
factor would multiply it. On a shaped link each request
first lets the token bucket refill, then spends it with one filler datagram, so the request
itself pays its bytes at the link rate (tbf passes a burst at line rate after idle; a real link
serialises every byte). Without a shaped link, `throttle` sleeps for the request's bytes instead.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.clock import ms_since
from pipeline.runtime import DEFAULT_RUNTIME
from pipeline.session_wire import FRAME_HEADER_BYTES
from serve.device.client import DeviceClient
from serve.inputs import MULTIPLEX_HEADER
from twostep.bench.emulation import TCP_SEGMENT_OVERHEAD, UDP_OVERHEAD, device_time, refill_gap_ms
from twostep.bench.strategies import Execution, execution_for


@dataclass
class Setup:
    url: str
    images: str
    labels: str
    interface: str | None = None  # count bytes on this interface (shaped link)
    prime_host: str | None = None  # filler datagrams go to (prime_host, prime_port)
    prime_port: int = 0
    burst_bytes: int = 0  # the token bucket's size; the filler spends it
    throttle: bool = False  # emulated link: sleep for the bytes of each request
    jpeg_quality: int = 90
    runtime: str = DEFAULT_RUNTIME  # what runs the device's heads (pipeline.runtime)
    transport: str = "http"  # frames and raw inputs: "stream" (one device session) or "http"

    @classmethod
    def load(cls, path: str) -> Setup:
        return cls(**json.loads(Path(path).read_text()))



class Counters:
    """Bytes sent and received on a network interface (None: not counted)."""

    def __init__(self, interface: str | None):
        self.base = Path("/sys/class/net") / interface / "statistics" if interface else None

    def read(self) -> tuple[int, int] | None:
        if self.base is None:
            return None
        return (int((self.base / "tx_bytes").read_text()), int((self.base / "rx_bytes").read_text()))


class Device:
    """Runs executions against the edge at `setup.url` and times every stage."""

    def __init__(self, setup: Setup):
        self.setup = setup
        self.client = DeviceClient(setup.url, link="bench", timeout_s=120.0,
                                   runtime=setup.runtime, threads=1)
        parsed = urllib.parse.urlsplit(setup.url)
        self.host, self.port = parsed.hostname, parsed.port or 80
        self.sock: socket.socket | None = None
        self.images = np.load(setup.images, allow_pickle=False)
        self.labels = np.load(setup.labels, allow_pickle=False)
        self.counters = Counters(setup.interface)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM) if setup.prime_host else None
        self.filler = b"\0" * max(0, setup.burst_bytes - UDP_OVERHEAD)
        self.bandwidth_bps = 1e9
        self.client.info()
        self.session = None
        if setup.transport == "stream":
            from serve.device.stream_client import DeviceSession

            self.session = DeviceSession(setup.url, link="bench", timeout_s=120.0)

    # ---- one request ----
    def _post(self, target: str, body: bytes, content_type: str, variant: str | None = None) -> dict:
        # a frame names its variant once, as Serve's multiplexed model id, and needs no
        # Content-Type: the fewest header bytes, as DeviceClient sends it
        kind = "" if variant else f"Content-Type: {content_type}\r\n"
        extra = f"{MULTIPLEX_HEADER}: {variant}\r\n" if variant else ""
        head = (f"POST {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"{kind}Content-Length: {len(body)}\r\n{extra}\r\n").encode()
        if self.setup.throttle:
            time.sleep((len(head) + len(body) + TCP_SEGMENT_OVERHEAD) * 8.0 / self.bandwidth_bps)
        if self.udp is not None:
            self.udp.sendto(self.filler, (self.setup.prime_host, self.setup.prime_port))
        for attempt in (0, 1):
            if self.sock is None:
                self.sock = socket.create_connection((self.host, self.port), timeout=120)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self.sock.sendall(head + body)
                response = http.client.HTTPResponse(self.sock, method="POST")
                response.begin()
                data = response.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError):
                self.sock.close()
                self.sock = None
                if attempt:
                    raise
        if response.status >= 400:
            raise RuntimeError(f"{target} answered {response.status}: {data[:300]!r}")
        return json.loads(data)

    def _device_work(self, fn, slowdown: float, row: dict):
        """fn(), taking the device's time for it (`device_time`): sleeps until that has passed.
        Sets row["device_ms"] and row["device_cpu_ms"] (this thread's CPU time, unslowed)."""
        start, cpu_start = time.perf_counter_ns(), time.thread_time_ns()
        result = fn()
        wall, cpu = ms_since(start), (time.thread_time_ns() - cpu_start) / 1e6
        total = device_time(wall, cpu, slowdown)
        if total > wall:
            time.sleep((total - wall) / 1000.0)
        row["device_ms"], row["device_cpu_ms"] = total, cpu
        return result

    def run_once(self, execution: Execution, index: int, slowdown: float) -> dict:
        pixels = self.images[index % len(self.images)][None]
        label = int(self.labels[index % len(self.labels)])
        row: dict = {"payload_bytes": 0, "device_ms": 0.0, "device_cpu_ms": 0.0, "send_ms": 0.0,
                     "edge_ms": 0.0, "edge_compute_ms": 0.0}
        start = time.perf_counter_ns()
        if self.session is not None and execution.mode in ("frame", "raw"):
            prediction, answer = self._over_session(execution, pixels, slowdown, row), None
        elif execution.mode in ("device", "frame"):
            # Head and frame encoding are both the device's work, both slowed down.
            output = self._device_work(self.head_work(execution, pixels), slowdown, row)
            if execution.mode == "device":
                prediction, answer = int(output[0].argmax()), {}
            else:
                frame = output
                query = urllib.parse.urlencode({"split": execution.split})
                send = time.perf_counter_ns()
                answer = self._post(f"/v1/tail?{query}", frame, "application/octet-stream",
                                    execution.variant)
                row["send_ms"] = ms_since(send)
                row["payload_bytes"] = len(frame)
                prediction = answer["predictions"][0]
        else:
            if execution.mode == "jpeg":
                quality = self.setup.jpeg_quality
                body = self._device_work(lambda: jpeg(pixels[0], quality), slowdown, row)
                content_type, extra = "image/jpeg", {}
            else:
                body, content_type = pixels.tobytes(), "application/octet-stream"
                extra = {"shape": ",".join(str(d) for d in pixels.shape[1:])}
            query = urllib.parse.urlencode({"variant": execution.variant, "split": "input", **extra})
            send = time.perf_counter_ns()
            answer = self._post(f"/v1/classify?{query}", body, content_type)
            row["send_ms"] = ms_since(send)
            row["payload_bytes"] = len(body)
            prediction = answer["prediction"]
        row["total_ms"] = ms_since(start)
        if answer is None:  # over the session: the edge's mean tail time for the route
            row["edge_ms"] = row["edge_compute_ms"] = row["edge_model_ms"] = row.pop("_tail_ms")
        elif execution.mode != "device":
            timings = answer["timings_ms"]
            row["edge_ms"] = timings["total"]
            row["edge_compute_ms"] = sum(timings.get(k, 0.0) for k in
                                         ("parse", "plan", "encode", "decode", "tail"))
            # what the cost model charges the edge (the model and the codec); the rest is fixed
            row["edge_model_ms"] = sum(timings.get(k, 0.0) for k in ("encode", "decode", "tail"))
        row["correct"] = prediction == label
        return row

    def _over_session(self, execution: Execution, pixels: np.ndarray, slowdown: float, row: dict) -> int:
        """One frame over the device session (a raw input as the variant's frame at `input`):
        head and coding are the device's work; returns the predicted class."""
        split = "input" if execution.mode == "raw" else execution.split
        coded = self._device_work(self.head_work(execution, pixels), slowdown, row)
        message_bytes = FRAME_HEADER_BYTES + len(coded[3])
        if self.setup.throttle:  # the message, its WebSocket header and one segment's headers
            time.sleep((message_bytes + 8 + TCP_SEGMENT_OVERHEAD) * 8.0 / self.bandwidth_bps)
        if self.udp is not None:
            self.udp.sendto(self.filler, (self.setup.prime_host, self.setup.prime_port))
        send = time.perf_counter_ns()
        answer, _ = self.session.wait(self.session.send_coded(execution.variant, split, coded))
        row["send_ms"] = ms_since(send)
        row["payload_bytes"] = message_bytes
        if not answer.ok:
            raise RuntimeError(f"session frame answered {answer.value}: {answer.error}")
        route = self.session.routes[(execution.variant, split)]
        row["_tail_ms"] = self.session.tail_ms.get(route.id, 0.0)
        return answer.value

    def head_work(self, execution: Execution, pixels: np.ndarray):
        """The device's work for a device or frame execution: its head, then (frame) encoding."""
        pixels = np.ascontiguousarray(pixels)
        if self.session is not None and execution.mode in ("frame", "raw"):
            split = "input" if execution.mode == "raw" else execution.split
            head = self.client.fetch_head(execution.variant, split)
            self.session.route(execution.variant, split)  # declared now, not inside the timing
            return lambda: self.session.encode(execution.variant, split, head(pixels))
        work = self.client.device_work(execution.variant, execution.split)
        return lambda: work(pixels)

    # ---- jobs ----
    def _refill(self) -> None:
        """Let the token bucket (and the idle downlink's) fill up before the next request."""
        if self.udp is not None:
            time.sleep(refill_gap_ms(self.setup.burst_bytes, self.bandwidth_bps) / 1000.0)

    def device_calls(self, executions: list[Execution], gaps_ms: list[float],
                     requests: int) -> list[dict[str, float]]:
        """Median CPU ms of each execution's device work at speed 1, each call as in the grid:
        after a request to the edge (Serve's no-op: the HTTP work of the previous request, which
        leaves the caches to the network code; without it a 0.1 ms frame encoding timed at a
        third of what it costs in a request) and an idle wait of `gap` ms (a call after a wait
        costs more: cold caches, a core waking up): one {execution key: ms} per gap, in order."""
        out = []
        for gap in gaps_ms:
            times: dict[str, list[float]] = {e.key: [] for e in executions}
            works = {e.key: self.head_work(e, self.images[0][None]) for e in executions}
            for work in works.values():
                work()  # warm-up
            for i in range(requests):
                pixels = self.images[i % len(self.images)][None]
                for execution in executions:
                    work = self.head_work(execution, pixels)
                    self._post("/noop/", b"x" * 60, "application/octet-stream")
                    time.sleep(gap / 1000.0)
                    cpu_start = time.thread_time_ns()
                    work()
                    times[execution.key].append((time.thread_time_ns() - cpu_start) / 1e6)
            out.append({key: float(np.median(values)) for key, values in times.items()})
        return out

    def measure(self, executions: dict[str, Execution], requests: int, slowdown: float,
                first_index: int = 0, each_round=None) -> dict[str, dict]:
        """`requests` interleaved requests of every execution (and `each_round()` after each
        round's); rows and link bytes per request."""
        for execution in executions.values():  # warm-up: weights fetched, caches filled
            if execution.mode in ("device", "frame"):
                self.client.fetch_head(execution.variant, execution.split)
            self.run_once(execution, first_index, 1.0)
        out = {key: {"execution": e.to_dict(), "rows": []} for key, e in executions.items()}
        for i in range(requests):
            for key, execution in executions.items():
                self._refill()
                before = self.counters.read()
                row = self.run_once(execution, first_index + i, slowdown)
                out[key]["rows"].append(row)
                out[key].setdefault("_before", []).append(before)
            if each_round is not None:
                each_round()
        self._refill()
        self._attribute_bytes(out)
        return out

    def _attribute_bytes(self, out: dict[str, dict]) -> None:
        filler = len(self.filler) + UDP_OVERHEAD if self.udp is not None and self.filler else 0
        attribute_bytes(out, self.counters.read(), filler)

    def calibrate(self, execution: Execution, whole: list[Execution], requests: int,
                  jpeg: Execution | None = None) -> dict:
        """Bytes on the link per request besides the payload, the fixed time of a request, and
        the device's CPU time for each `whole` model (split output): what a slowdown multiplies."""
        self.bandwidth_bps = 1e9
        floor: list[float] = []

        def noop() -> None:  # Serve's own floor: a no-op ingress, same connection, 60 B
            self._refill()
            start = time.perf_counter_ns()
            self._post("/noop/", b"x" * 60, "application/octet-stream")
            floor.append(ms_since(start))

        runs = {"calibration": execution, **{f"whole{i}": e for i, e in enumerate(whole)},
                **({"jpeg": jpeg} if jpeg is not None else {})}
        # the floor interleaved with the device path, so that other load hits both alike
        both = self.measure(runs, requests, 1.0, each_round=noop)
        measured = both["calibration"]["rows"]
        whole_ms = [float(np.median([r["device_cpu_ms"] for r in both[f"whole{i}"]["rows"]]))
                    for i in range(len(whole))]
        fixed = [r["send_ms"] - r["edge_compute_ms"] for r in measured]
        if measured[0]["tx_bytes"] is not None:
            overhead = float(np.mean([r["tx_bytes"] - r["payload_bytes"] for r in measured]))
            source = "counted on the link"
        else:
            overhead = self.request_head_bytes(execution) + TCP_SEGMENT_OVERHEAD
            source = "HTTP request head + one TCP segment's headers (emulated link)"
            if self.session is not None:
                overhead = 8 + TCP_SEGMENT_OVERHEAD
                source = "WebSocket header + one TCP segment's headers (emulated link)"
        # a JPEG goes through /v1/classify: the Router's hops and the decode on the edge
        jpeg_fixed = float(np.median([r["send_ms"] - r["edge_model_ms"] for r in both["jpeg"]["rows"]])
                           ) if jpeg is not None else None
        # what a request costs the device besides its (slowed) work: on-device runs send nothing
        request_ms = float(np.median([r["total_ms"] - r["device_ms"] for i in range(len(whole))
                                      for r in both[f"whole{i}"]["rows"]])) if whole else 0.0
        return {"overhead_bytes": overhead, "fixed_ms": float(np.median(fixed)),
                "device_request_ms": request_ms,
                "jpeg_fixed_ms": jpeg_fixed,
                "floor_ms": float(np.median(floor)),
                "overhead_source": source, "whole_device_ms": whole_ms, "rows": measured}

    def request_head_bytes(self, execution: Execution) -> int:
        query = urllib.parse.urlencode({"split": execution.split})
        return len(f"POST /v1/tail?{query} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                   f"Content-Length: 100\r\n{MULTIPLEX_HEADER}: {execution.variant}\r\n\r\n")

    def plan(self, point: dict) -> dict:
        """The router's best row for a grid point (`/v1/plan` with this device's speed, and its
        own times of the heads it timed, `device_ms`, where the point has them)."""
        params = {
            "bandwidth_bps": point["bandwidth_bps"], "rtt_ms": point["rtt_ms"],
            "device_slowdown": point["slowdown"], "device_overhead_ms": point.get("overhead_ms", 0.0),
            "accuracy_floor": point["accuracy_floor"], "frames_only": "true", "top": 1}
        return self.client._planning("/v1/plan", params, point.get("device_ms"))["best"]

    def prefetch(self, job: dict) -> dict:
        """Ask the router's plan of every grid point and download every head the grid needs,
        while the link is fast (a head of a few MB would take minutes at 0.1 Mbit/s)."""
        plans = [self.plan(point) for point in job["points"]]
        executions = [Execution(**e) for e in job["executions"]]
        executions += [execution_for(p["variant"], p["split"], p["strategy"]) for p in plans]
        for execution in executions:
            if execution.mode in ("device", "frame"):
                self.client.fetch_head(execution.variant, execution.split)
        return {"plans": plans, "heads": len(self.client._heads)}

    def point(self, job: dict) -> dict:
        """Every execution of one grid point, plus the router's own choice (strategy f)."""
        self.bandwidth_bps = float(job["bandwidth_bps"])
        slowdown = float(job["slowdown"])
        best = job["plan"]
        chosen = execution_for(best["variant"], best["split"], best["strategy"])
        executions = {k: Execution(**e) for k, e in job["executions"].items()}
        executions.setdefault(chosen.key, chosen)
        measured = self.measure(executions, int(job["requests"]), slowdown, int(job.get("first_index", 0)))
        return {"plan": best, "router_execution": chosen.key, "measured": measured}


def attribute_bytes(out: dict[str, dict], final: tuple[int, int] | None, filler: int) -> None:
    """Set `tx_bytes`/`rx_bytes` of every row of `out` (filled by `Device.measure`, requests
    interleaved: request i of every execution, in order, then request i + 1): the interface
    counters from just before a request to just before the next one (late ACKs included), less
    the `filler` bytes a request that sends spent first. `final` is read after the last request.
    Pops the `_before` readings."""
    keys = list(out)
    order = [(i, key) for i in range(len(out[keys[0]]["rows"])) for key in keys]
    for n, (i, key) in enumerate(order):
        before = out[key]["_before"][i]
        after = final if n + 1 == len(order) else out[order[n + 1][1]]["_before"][order[n + 1][0]]
        row = out[key]["rows"][i]
        if before is None or after is None:
            row["tx_bytes"] = row["rx_bytes"] = None
            continue
        sent = after[0] - before[0] - (filler if out[key]["execution"]["mode"] != "device" else 0)
        row["tx_bytes"], row["rx_bytes"] = sent, after[1] - before[1]
    for entry in out.values():
        entry.pop("_before")


def jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of one uint8 (C, H, W) image (grey or RGB)."""
    from PIL import Image

    array = pixels[0] if pixels.shape[0] == 1 else np.transpose(pixels, (1, 2, 0))
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    torch.set_num_threads(1)
    device = Device(Setup.load(argv[0]))
    print("READY", flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        try:
            if job["kind"] == "calibrate":
                result = device.calibrate(Execution(**job["execution"]),
                                          [Execution(**e) for e in job["whole"]], int(job["requests"]),
                                          Execution(**job["jpeg"]) if job.get("jpeg") else None)
            elif job["kind"] == "device_calls":
                result = device.device_calls([Execution(**e) for e in job["executions"]],
                                             [float(g) for g in job["gaps_ms"]], int(job["requests"]))
            elif job["kind"] == "prefetch":
                result = device.prefetch(job)
            elif job["kind"] == "point":
                result = device.point(job)
            elif job["kind"] == "trace":
                from twostep.bench.device_trace import replay_trace

                result = replay_trace(device.setup, device.images, device.labels, job)
            else:
                raise ValueError(f"unknown job kind {job['kind']!r}")
        except Exception as err:  # reported to the orchestrator, which stops the run
            result = {"error": f"{type(err).__name__}: {err}"}
        print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
