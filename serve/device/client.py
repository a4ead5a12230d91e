"""The device client: run a variant's head locally, as a real device would, and let the edge finish.

`DeviceClient` picks a (variant, split) from the edge's plan table for its constraint (fetched
once and cached: no planning request per inference), fetches that head's weights and checks
their sha256, runs the head on the device's own CPU, encodes the feature map with the series'
codec, POSTs the frame to `/v1/tail` (one hop to a tail replica, retried if that replica dies)
and returns the prediction with the time of every stage. It
measures its own uplink from each upload (request time minus the server's time minus the round
trip measured by pinging `/v1/health`) and reports it with the next request (`uplink_bps`), so the
edge's planner knows this device's link. It plans from its own estimate of those measurements
(the router's settings) and, while it runs everything on the device, probes its uplink over its
session every half second so that it offloads again when the link comes back. `throttle_bps`
makes the client hold each frame back as a link of that rate would (link emulation on the device
side, for one-machine runs).
Standard library HTTP (one keep-alive connection), no Ray.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import math
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from pipeline.clock import ms_since
from pipeline.codec import codec_config, encode_frame, variant_tag
from pipeline.device_times import DeviceTimes, device_times_document
from pipeline.onnx_session import normalizer
from pipeline.runtime import DEVICE_RUNTIMES, check_runtime
from pipeline.session_wire import CLOSE_UNSUPPORTED
from serve.bandwidth import (
    LINK_BAND,
    LINK_MAX_AGE_S,
    LINK_WINDOW,
    PROBE_BYTES,
    PROBE_INTERVAL_S,
    BandwidthEstimator,
    EstimatorConfig,
)
from serve.deadline import censored_seconds
from serve.device.stream_client import PROBE_TIMEOUT_S, FrameLate
from serve.inputs import IMAGE_TYPES, MULTIPLEX_HEADER, decode_image
from serve.plan_table import pick

DEADLINE_FACTOR = 2.0  # a frame's deadline: this x the fallback's time on this device (as the router)
TRANSPORTS = ("auto", "stream", "http")
HeadCall = Callable[[np.ndarray], np.ndarray]  # uint8 pixels -> the features it sends


def resolve_runtime(runtime: str = "auto") -> str:
    """`auto`: ONNX Runtime where it is installed (3-6x faster per call here), else PyTorch."""
    import importlib.util

    check_runtime(runtime, DEVICE_RUNTIMES)
    if runtime != "auto":
        return runtime
    return "onnxruntime" if importlib.util.find_spec("onnxruntime") else "torch"


def _torch_head(data: bytes, spec: dict, info: dict, split: str, threads: int) -> HeadCall:
    """The head from safetensors weights, run by eager PyTorch (imported only here)."""
    import torch

    from pipeline.data import DataInfo, normalize
    from pipeline.models.inference import inference_form
    from pipeline.models.registry import ArchSpec
    from pipeline.split import split_model
    from serve.weights import load_head

    torch.set_num_threads(threads)
    data_info = DataInfo.from_dict(info)
    head = split_model(inference_form(load_head(data, ArchSpec.from_dict(spec), split)), split)[0]

    def call(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return head(normalize(torch.from_numpy(np.ascontiguousarray(pixels)), data_info)).numpy()
    return call


class DeviceError(RuntimeError):
    """The edge refused a request or could not be reached; `status` is the HTTP status (0: none).
    `retryable`: a server-side failure that is not about the request (sending it again may work)."""

    def __init__(self, status: int, message: str, retryable: bool = False):
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message
        self.retryable = retryable


@dataclass
class DeviceResult:
    """One inference: what served it, the prediction, and the time of each stage in ms."""

    prediction: int
    label: str
    logits: list[float]
    variant: str
    split: str
    bytes_sent: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    uplink_bps: float | None = None
    transport: str = "http"  # how the frame went: "stream" (the session) or "http" (/v1/tail)
    # the frame missed its deadline and the device ran the fallback: (variant, split) it planned
    given_up_from: tuple[str, str] | None = None



class DeviceClient:
    """A device talking to the edge's HTTP API at `url` as link `link`."""

    def __init__(self, url: str, link: str = "device", timeout_s: float = 30.0,
                 throttle_bps: float | None = None, min_report_bytes: int = 512,
                 initial_bps: float = 10e6, table_ttl_s: float = 300.0, runtime: str = "auto",
                 threads: int = 1, transport: str = "auto", token: str | None = None,
                 logits: bool = False, frame_deadline_ms: float | None = None,
                 deadline_factor: float = DEADLINE_FACTOR, device_slowdown: float | None = None,
                 device_overhead_ms: float = 0.0):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"url must look like http://HOST:PORT, got {url!r}")
        if throttle_bps is not None and not throttle_bps > 0:
            raise ValueError(f"throttle_bps must be > 0, got {throttle_bps!r}")
        self.host, self.port = parsed.hostname, parsed.port or 80
        self.runtime = resolve_runtime(runtime)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
        self.threads = threads
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
        self.transport = transport
        if frame_deadline_ms is not None and not 0 < frame_deadline_ms <= 3_600_000:
            raise ValueError(f"frame_deadline_ms must be in (0, 3600000], got {frame_deadline_ms!r}")
        if not 0 <= deadline_factor <= 1000:
            raise ValueError(f"deadline_factor must be in [0, 1000], got {deadline_factor!r}")
        self.frame_deadline_ms, self.deadline_factor = frame_deadline_ms, deadline_factor
        if device_slowdown is not None and not 0 < device_slowdown <= 1e4:
            raise ValueError(f"device_slowdown must be in (0, 10000], got {device_slowdown!r}")
        # how much slower than the edge's profile this device runs the heads it has not timed
        # (None: the edge's device profile)
        self.device_slowdown = device_slowdown
        if not 0 <= device_overhead_ms <= 60_000 or (device_overhead_ms and device_slowdown is None):
            raise ValueError(f"device_overhead_ms must be in [0, 60000] and needs device_slowdown, "
                             f"got {device_overhead_ms!r}")
        self.device_overhead_ms = device_overhead_ms
        self.deadline_hits = 0
        self.token = token
        self.logits = logits  # a session answers with logits only when asked (else the class)
        self._session = None  # serve.device.stream_client.DeviceSession, opened on the first frame
        self.link = link
        self.timeout_s = timeout_s
        self.throttle_bps = throttle_bps
        self.min_report_bytes = min_report_bytes
        self._conn: http.client.HTTPConnection | None = None
        self._info: dict | None = None
        self._heads: dict[tuple[str, str], tuple[HeadCall, str]] = {}
        self.rtt_ms: float | None = None
        # this device's own uplink estimate, from its uploads and probes (the router's settings)
        self.estimator = BandwidthEstimator(EstimatorConfig(
            initial_bps, LINK_WINDOW, LINK_MAX_AGE_S, min_report_bytes, LINK_BAND))
        self.probe_bytes, self.probe_interval_s = PROBE_BYTES, PROBE_INTERVAL_S
        self.probing = True  # off once the edge refused a probe (an edge without them)
        self.probes = self.probe_failures = 0
        self._last_probe = -math.inf
        self.initial_bps = initial_bps
        self.min_report_change = 0.1
        self._reported_bps: float | None = None
        self.table_ttl_s = table_ttl_s
        self._tables: dict[tuple, tuple[float, dict]] = {}
        self._current: dict[tuple, tuple[str, str]] = {}
        # this device's own measured time per (variant, split) head (time_heads): sent with
        # every plan, in place of the edge's scaled profile for those heads
        self.device_ms: DeviceTimes = {}

    # ---- HTTP ----
    def _request(self, method: str, path: str, params: dict | None = None, body: bytes | None = None,
                 content_type: str | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        target = path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = {**({"Content-Type": content_type} if content_type else {}), **(headers or {})}
        for attempt in (0, 1):  # one retry on a keep-alive connection the server closed
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            try:
                # by hand rather than request(): no Accept-Encoding header (bytes on the uplink)
                self._conn.putrequest(method, target, skip_accept_encoding=True)
                for name, value in headers.items():
                    self._conn.putheader(name, value)
                if body is not None:
                    self._conn.putheader("Content-Length", str(len(body)))
                self._conn.endheaders(body)
                response = self._conn.getresponse()
                data = response.read()
                break
            except TimeoutError as err:
                # Not resent here (the request may still be running at the edge); send_frame
                # resends a frame (idempotent) whose replica never answered, e.g. one killed
                # while Serve's proxy waited on it.
                self.close()
                raise DeviceError(0, f"{self.host}:{self.port} did not answer in "
                                     f"{self.timeout_s:g} s", retryable=True) from err
            except (ConnectionError, http.client.HTTPException, OSError) as err:
                self.close()
                if attempt:
                    raise DeviceError(0, f"cannot reach {self.host}:{self.port}: {err}",
                                      retryable=True) from err
        if response.status >= 400:
            try:
                message = json.loads(data)["error"]
            except (ValueError, AttributeError, KeyError, TypeError):
                # not one of our JSON errors: Serve's own (e.g. the replica died mid-request)
                raise DeviceError(response.status, data[:200].decode(errors="replace"),
                                  retryable=response.status >= 500) from None
            raise DeviceError(response.status, message)
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def _json(self, method: str, path: str, **kwargs) -> dict:
        return json.loads(self._request(method, path, **kwargs)[2])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._session is not None:
            self._session.close()
            self._session = None

    def session(self):
        """The device session (`serve.device.stream_client.DeviceSession`) frames go over, or None
        where they go as HTTP requests: `transport` http, or auto where the edge offers no
        session or the `websockets` package is missing."""
        if self.transport == "http":
            return None
        if self._session is None:
            try:
                import websockets  # noqa: F401 - the session's only dependency beyond numpy, lz4

                from serve.device.stream_client import DeviceSession
            except ImportError:
                if self.transport == "stream":
                    raise
                self.transport = "http"
                return None
            self._session = DeviceSession(f"http://{self.host}:{self.port}", self.link, self.token,
                                          logits=self.logits, timeout_s=self.timeout_s,
                                          throttle_bps=self.throttle_bps,
                                          min_sample_bytes=self.min_report_bytes)
        return self._session

    def _send_over_session(self, session, features: np.ndarray, variant: str, split: str,
                           deadline_ms: float | None = None) -> tuple[int, list[float], int] | None:
        """(class, logits or [], bytes sent) of a frame sent over the session, or None when
        the edge has none (transport auto then stays on HTTP). Raises FrameLate (the frame given
        up, its time learnt as a lower bound) when no answer came within `deadline_ms`."""
        from serve.device.stream_client import SessionUnavailable

        try:
            seq = session.send(variant, split, features)
        except SessionUnavailable:
            if self.transport == "stream":
                raise
            self.transport, self._session = "http", None
            return None
        sent = len(session.pending[seq].message) if seq in session.pending else 0
        try:
            answer, _ = session.wait(seq, None if deadline_ms is None else deadline_ms / 1000.0)
        except FrameLate:
            session.give_up(seq)
            # its bytes did not arrive in that time, whatever their size: an exact lower bound
            self.estimator.add_transfer(sent, censored_seconds(deadline_ms / 1000.0, 0.0), exact=True)
            raise
        if not answer.ok:
            raise DeviceError(answer.value, answer.error)
        if session.last_sample is not None:
            self._learn(*session.last_sample)
            session.last_sample = None
            if self._reported_bps is None or abs(self.uplink_bps / self._reported_bps - 1) > \
                    self.min_report_change:
                session.report_uplink(self.uplink_bps)
                self._reported_bps = self.uplink_bps
        return answer.value, list(answer.logits), sent

    def _device_speed(self) -> dict:
        return {"device_slowdown": self.device_slowdown,
                "device_overhead_ms": self.device_overhead_ms or None}

    def fallback(self, accuracy_floor: float | None = None,
                 latency_budget_ms: float | None = None) -> tuple[str, str] | None:
        """The (variant, "output") this device runs when a frame misses its deadline: the plan
        table's choice at a bandwidth near zero, when that runs everything here (None: no table
        cached for this constraint, or nothing on the device meets it)."""
        cached = self._tables.get((accuracy_floor, latency_budget_ms))
        if cached is None or not cached[1]["rows"]:
            return None
        row = cached[1]["rows"][0]
        return (row["variant"], "output") if row["variant"] and row["split"] == "output" else None

    def deadline_ms(self, fallback: tuple[str, str] | None) -> float | None:
        """A frame's deadline: `frame_deadline_ms` when set, else `deadline_factor` x the
        fallback's measured time on this device (`time_heads`); None without a fallback."""
        if fallback is None:
            return None
        if self.frame_deadline_ms is not None:
            return self.frame_deadline_ms
        known = self.device_ms.get(fallback)
        return self.deadline_factor * known if known and self.deadline_factor > 0 else None

    @property
    def uplink_bps(self) -> float | None:
        """This device's uplink estimate (None until an upload or probe was timed)."""
        return self.estimator.estimate_bps if self.estimator.samples_seen > self.estimator.samples_ignored \
            else None

    @uplink_bps.setter
    def uplink_bps(self, bandwidth_bps: float) -> None:
        self.assume_uplink(bandwidth_bps)

    def assume_uplink(self, bandwidth_bps: float) -> None:
        """Forget what was measured and plan as if the uplink ran at `bandwidth_bps`."""
        self.estimator = BandwidthEstimator(dataclasses.replace(self.estimator.config,
                                                                initial_bps=bandwidth_bps))
        self.estimator.report(bandwidth_bps)

    def _learn(self, nbytes: int, seconds: float) -> None:
        self.estimator.add_transfer(nbytes, seconds)

    def maybe_probe(self) -> bool:
        """While the device runs everything (it sends nothing), time a small upload over its
        session every `probe_interval_s` so that its estimate sees the link come back. Needs a
        session that has sent a frame before (its routes are declared); HTTP-only devices do not
        probe. A probe that fails (a stalled link, a closed session, an edge without probes) is
        counted and never fails the inference it rode along with. Returns whether one went."""
        now = time.monotonic()
        if (not self.probing or self.transport == "http" or now - self._last_probe < self.probe_interval_s
                or self.estimator.age_s() < self.probe_interval_s):
            return False
        session = self._session
        if session is None or not session.decls:
            return False
        from serve.device.stream_client import SessionClosed, _connection_closed

        self._last_probe = now
        self.probes += 1
        try:
            sample = session.probe(max(self.probe_bytes, self.min_report_bytes))
        except TimeoutError:  # the link is slower than the probe over the timeout, or stalled:
            self.probe_failures += 1  # its bytes took at least that long, whatever their size
            self.estimator.add_transfer(max(self.probe_bytes, self.min_report_bytes), PROBE_TIMEOUT_S,
                                        exact=True)
            return True
        except (SessionClosed, ConnectionError, OSError, _connection_closed()) as err:
            self.probe_failures += 1
            code = getattr(err, "code", None) or getattr(getattr(err, "rcvd", None), "code", None)
            if code == CLOSE_UNSUPPORTED:  # an edge that predates probes: stop asking it
                self.probing = False
            session.close()  # the next frame reconnects
            return True
        session.last_sample = None
        if sample is not None:
            self._learn(*sample)
        return True

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- edge information ----
    def info(self) -> dict:
        """`GET /v1/variants` (cached): data info, codec and the variants with their splits."""
        if self._info is None:
            self._info = self._json("GET", "/v1/variants")
        return self._info

    def variant(self, variant_id: str) -> dict:
        for entry in self.info()["variants"]:
            if entry["id"] == variant_id:
                return entry
        raise ValueError(f"the edge has no variant {variant_id!r}")

    def ping(self, count: int = 3) -> float:
        """Round-trip time to the edge in ms (the minimum of `count` requests to the ingress's
        own health check, which no replica handles: the link and the ingress, nothing else)."""
        times = []
        for _ in range(count):
            start = time.perf_counter_ns()
            self._request("GET", "/-/healthz")
            times.append(ms_since(start))
        self.rtt_ms = min(times)
        return self.rtt_ms

    def plan(self, accuracy_floor: float | None = None, latency_budget_ms: float | None = None,
             bandwidth_bps: float | None = None, top: int = 5) -> dict:
        """`/v1/plan` for this device's link (its reported uplink unless `bandwidth_bps`) and its
        measured head times (`time_heads`): the best `top` rows ranked."""
        bandwidth = bandwidth_bps if bandwidth_bps is not None else self.uplink_bps
        return self._planning("/v1/plan", {
            "accuracy_floor": accuracy_floor, "latency_budget_ms": latency_budget_ms,
            "bandwidth_bps": bandwidth, "rtt_ms": self.rtt_ms, "link": self.link, "top": top,
            **self._device_speed(),
            # this client runs heads and sends frames: never plan it an image upload
            "frames_only": "true"})

    def plan_timed(self, accuracy_floor: float | None = None, latency_budget_ms: float | None = None,
                   bandwidth_bps: float | None = None, pixels: np.ndarray | None = None,
                   shortlist: int = 8, calls: int = 10, idle_ms: float = 0.0, top: int = 5,
                   rounds: int = 4) -> dict:
        """Plan as `plan`, after timing here (`time_heads`, on `pixels` or random ones) the heads
        of the edge's best `shortlist` rows not timed yet, and again while the best row is one
        it has not timed (at most `rounds` times): the plan then ranks them by what they cost
        this device, not by the edge's profile."""
        if isinstance(shortlist, bool) or not isinstance(shortlist, int) or not 1 <= shortlist <= 100:
            raise ValueError(f"shortlist must be an integer in [1, 100], got {shortlist!r}")
        if pixels is None:
            data = self.info()["data"]
            shape = (1, int(data["in_channels"]), int(data["input_size"]), int(data["input_size"]))
            pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        for _ in range(rounds):
            ranked = self.plan(accuracy_floor, latency_budget_ms, bandwidth_bps, top=shortlist)["ranked"]
            heads = [(r["variant"], r["split"]) for r in ranked
                     if r["device_ms"] > 0 and (r["variant"], r["split"]) not in self.device_ms]
            if not heads:
                break
            self.time_heads(heads, pixels, calls, idle_ms)
        return self.plan(accuracy_floor, latency_budget_ms, bandwidth_bps, top=top)

    def _planning(self, path: str, params: dict, times: dict | None = None) -> dict:
        """GET `path`, or POST it with head times: `times` (their JSON form) when given, else
        this device's measured ones when it has some."""
        if times:
            return self._json("POST", path, params=params, content_type="application/json",
                              body=json.dumps({"device_ms": times}).encode())
        if self.device_ms:
            try:
                return self._planning(path, params, device_times_document(self.device_ms))
            except DeviceError as err:
                if err.status != 400 or not err.message.startswith("device_ms"):
                    raise
                # the edge serves another series now: these times name heads it no longer has
                self.device_ms = {}
                self._info = None
        return self._json("GET", path, params=params)

    def time_heads(self, heads: Iterable[tuple[str, str]], pixels: np.ndarray, calls: int = 10,
                   idle_ms: float = 0.0) -> DeviceTimes:
        """Time this device's work for each (variant, split): the head and the frame's encoding
        (the whole model at `output`), median wall ms of `calls` calls, each after `idle_ms` of
        idleness (as between this device's requests: a call after a wait costs more than a
        back-to-back one). The times are kept (`device_ms`) and sent with every later plan."""
        if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
            raise ValueError(f"calls must be an integer >= 1, got {calls!r}")
        if not 0 <= idle_ms <= 60_000:
            raise ValueError(f"idle_ms must be in [0, 60000], got {idle_ms!r}")
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        measured: DeviceTimes = {}
        for variant, split in dict.fromkeys(heads):
            work = self.device_work(variant, split)
            work(pixels)  # warm-up
            times = []
            for _ in range(calls):
                time.sleep(idle_ms / 1000.0)
                start = time.perf_counter_ns()
                work(pixels)
                times.append(ms_since(start))
            measured[(variant, split)] = float(np.median(times))
        self.device_ms.update(measured)
        self._tables.clear()  # planned without these times
        return measured

    def plan_table(self, accuracy_floor: float | None = None,
                   latency_budget_ms: float | None = None) -> dict:
        """The edge's plan table for this constraint and this device's measured head times
        (`/v1/plan/table`), cached until the constraint changes, `table_ttl_s` passes or the
        device times more heads."""
        key = (accuracy_floor, latency_budget_ms)
        cached = self._tables.get(key)
        if cached is None or time.monotonic() - cached[0] > self.table_ttl_s:
            table = self._planning("/v1/plan/table", {
                "accuracy_floor": accuracy_floor, "latency_budget_ms": latency_budget_ms,
                "rtt_ms": self.rtt_ms, "frames_only": "true", **self._device_speed()})
            self._tables[key] = cached = (time.monotonic(), table)
        return cached[1]

    def choose(self, accuracy_floor: float | None = None,
               latency_budget_ms: float | None = None) -> dict:
        """(variant, split) row for this device's uplink estimate, from the cached plan table,
        keeping the current choice near a boundary; no request unless the table is missing."""
        table = self.plan_table(accuracy_floor, latency_budget_ms)
        bandwidth = self.uplink_bps if self.uplink_bps is not None else self.initial_bps
        row = pick(table["rows"], bandwidth, self._current.get((accuracy_floor, latency_budget_ms)),
                   table["switch_margin"])
        if row["variant"] is None:
            raise DeviceError(422, f"no variant meets the constraint at {bandwidth:.4g} bit/s")
        self._current[(accuracy_floor, latency_budget_ms)] = (row["variant"], row["split"])
        return row

    def send_frame(self, frame: bytes, variant: str, split: str, retries: int = 3) -> dict:
        """POST a frame to `/v1/tail` (one hop to a tail replica), with the fewest headers: Host,
        Content-Length and the variant as Serve's multiplexed model id, so the frame goes to a
        replica that holds the variant (no Content-Type: the tail takes any body as a frame).
        A frame is idempotent, so a failure of the edge that is not about the request (a tail
        replica that died mid-request) is retried."""
        # The variant travels once, as the multiplexed model id; the uplink only when it moved
        # by more than min_report_change since the last report (the edge keeps it).
        params = {"split": split, "link": self.link}
        if self.uplink_bps is not None and (
                self._reported_bps is None
                or abs(self.uplink_bps / self._reported_bps - 1) > self.min_report_change):
            params["uplink_bps"] = f"{self.uplink_bps:.4g}"
            self._reported_bps = self.uplink_bps
        def post() -> dict:
            return self._json("POST", "/v1/tail", body=frame, params=params,
                              headers={MULTIPLEX_HEADER: variant})

        for attempt in range(retries):
            try:
                return post()
            except DeviceError as err:
                if not err.retryable:
                    raise
                self.close()
                time.sleep(min(0.1 * 2 ** attempt, 1.0))
        return post()

    def download_head(self, variant_id: str, split: str, expected_sha256: str | None = None,
                      fmt: str = "safetensors") -> tuple[bytes, str]:
        """(bytes of the head at `split`: safetensors weights or, with `fmt` onnx, the ONNX
        graph from pixels to features; sha256), checked against the edge's `X-Twostep-Sha256`
        header and against `expected_sha256` when pinned."""
        params = {"split": split, **({} if fmt == "safetensors" else {"format": fmt})}
        _, headers, data = self._request("GET", f"/v1/variants/{variant_id}/head", params=params)
        sha = headers.get("x-twostep-sha256", "")
        if hashlib.sha256(data).hexdigest() != sha:
            raise DeviceError(0, f"head weights of {variant_id}@{split} do not match their sha256")
        if expected_sha256 is not None and sha != expected_sha256.lower():
            raise DeviceError(0, f"head weights sha256 {sha} is not the pinned {expected_sha256}")
        return data, sha

    def fetch_head(self, variant_id: str, split: str, expected_sha256: str | None = None) -> HeadCall:
        """The variant's head at `split` as a call from uint8 pixels (N, C, S, S) to the features
        it sends (normalisation included), run by this client's runtime from verified bytes
        (downloaded once): the ONNX graph for onnxruntime, the weights for torch."""
        key = (variant_id, split)
        if key not in self._heads:
            if split == "input":  # nothing runs before the split: the normalised pixels
                data = self.info()["data"]
                self._heads[key] = (normalizer(data["mean"], data["std"]), "")
            elif self.runtime == "onnxruntime":
                from pipeline.onnx_session import GraphRunner

                data, sha = self.download_head(variant_id, split, expected_sha256, fmt="onnx")
                self._heads[key] = (GraphRunner(data, self.threads), sha)
            else:
                data, sha = self.download_head(variant_id, split, expected_sha256)
                self._heads[key] = (_torch_head(data, self.variant(variant_id)["spec"],
                                                self.info()["data"], split, self.threads), sha)
        return self._heads[key][0]

    def device_work(self, variant_id: str, split: str) -> Callable[[np.ndarray], np.ndarray | bytes]:
        """What this device does for one image at (variant, split): the head, then the frame's
        encoding (the logits at `output`, which sends nothing)."""
        head = self.fetch_head(variant_id, split)
        if split == "output":
            return head
        codec, tag = codec_config(self.info()["codec"]), variant_tag(variant_id)
        return lambda pixels: encode_frame(head(pixels), codec, tag)

    # ---- inference ----
    def pixels(self, image: bytes | np.ndarray, content_type: str = "image/png") -> np.ndarray:
        """uint8 (1, C, S, S) for the series from PNG/JPEG bytes or a uint8 (C, S, S) array."""
        data = self.info()["data"]
        if isinstance(image, np.ndarray):
            array = image.astype(np.uint8, copy=False)
            return array[None] if array.ndim == 3 else array
        fmt = IMAGE_TYPES.get(content_type)
        if fmt is None:
            raise ValueError(f"content_type must be one of {', '.join(IMAGE_TYPES)}, got {content_type!r}")
        return decode_image(image, fmt, int(data["in_channels"]), int(data["input_size"]), 1 << 24)

    def classify(self, pixels: np.ndarray, variant: str | None = None, split: str | None = None,
                 accuracy_floor: float | None = None,
                 latency_budget_ms: float | None = None) -> DeviceResult:
        """Classify uint8 (1, C, S, S) `pixels`: plan (unless `variant` and `split` are given),
        run the head here, send the frame, and return what the edge answered."""
        if (variant is None) != (split is None):
            raise ValueError("give variant and split together, or neither (the edge plans)")
        start = time.perf_counter_ns()
        timings: dict[str, float] = {}
        if self.rtt_ms is None:
            self.ping()
        if variant is None or split is None:
            plan_start = time.perf_counter_ns()
            best = self.choose(accuracy_floor, latency_budget_ms)
            variant, split = best["variant"], best["split"]
            timings["plan"] = ms_since(plan_start)
        info = self.info()
        fetch_start = time.perf_counter_ns()
        head = self.fetch_head(variant, split)
        timings["fetch"] = ms_since(fetch_start)
        head_start = time.perf_counter_ns()
        features = head(np.ascontiguousarray(pixels, dtype=np.uint8))
        timings["head"] = ms_since(head_start)
        if split == "output":
            logits = features[0].tolist()
            prediction = int(np.argmax(logits))
            timings["total"] = ms_since(start)
            self.maybe_probe()  # after the answer: the probe is the device's chore, not the request's
            return DeviceResult(prediction, info["data"]["classes"][prediction], logits, variant, split,
                                0, timings)
        session = self.session()
        if session is not None:
            send_start = time.perf_counter_ns()
            fallback = self.fallback(accuracy_floor, latency_budget_ms)
            try:
                answered = self._send_over_session(session, features, variant, split,
                                                   self.deadline_ms(fallback))
            except FrameLate:  # the link stalled: the device finishes this one itself
                self.deadline_hits += 1
                timings["send"] = ms_since(send_start)
                logits = self.fetch_head(*fallback)(np.ascontiguousarray(pixels, dtype=np.uint8))[0].tolist()
                prediction = int(np.argmax(logits))
                timings["total"] = ms_since(start)
                return DeviceResult(prediction, info["data"]["classes"][prediction], logits, fallback[0],
                                    "output", 0, timings, self.uplink_bps, "stream", (variant, split))
            if answered is not None:
                prediction, logits, sent = answered
                timings["send"] = ms_since(send_start)
                timings["total"] = ms_since(start)
                return DeviceResult(prediction, info["data"]["classes"][prediction], logits, variant,
                                    split, sent, timings, self.uplink_bps, "stream")
        encode_start = time.perf_counter_ns()
        frame = encode_frame(features, codec_config(info["codec"]), variant_tag(variant))
        timings["encode"] = ms_since(encode_start)
        send_start = time.perf_counter_ns()
        if self.throttle_bps is not None:
            time.sleep(len(frame) * 8.0 / self.throttle_bps)
        answer = self.send_frame(frame, variant, split)
        timings["send"] = ms_since(send_start)
        timings["edge"] = answer["timings_ms"]["total"]
        timings["edge_tail"] = answer["timings_ms"]["tail"]
        timings["uplink"] = max(0.0, timings["send"] - timings["edge"] - (self.rtt_ms or 0.0))
        if timings["uplink"] > 0:
            self._learn(len(frame), timings["uplink"] / 1000.0)
        timings["total"] = ms_since(start)
        prediction = answer["predictions"][0]
        return DeviceResult(prediction, answer["labels"][0], answer["logits"][0], variant, split,
                            len(frame), timings, self.uplink_bps)

    def classify_stream(self, images: Iterable[np.ndarray], variant: str, split: str,
                        window: int = 4) -> Iterable[DeviceResult]:
        """Classify a stream of uint8 (1, C, S, S) images at (variant, split) over the session,
        pipelined: up to `window` frames go before their answers come back. Yields one result
        per image, in order (falls back to `classify` one by one without a session)."""
        if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= 1024:
            raise ValueError(f"window must be an integer in [1, 1024], got {window!r}")
        session = self.session() if split != "output" else None
        if session is None:
            for pixels in images:
                yield self.classify(pixels, variant, split)
            return
        classes = self.info()["data"]["classes"]
        head = self.fetch_head(variant, split)
        in_flight: list[tuple[int, int, float]] = []  # (seq, bytes, start)

        def answered() -> DeviceResult:
            seq, sent, start = in_flight.pop(0)
            answer, at = session.wait(seq)
            if not answer.ok:
                raise DeviceError(answer.value, answer.error)
            return DeviceResult(answer.value, classes[answer.value], list(answer.logits), variant, split,
                                sent, {"total": (at - start) * 1000}, session.uplink_bps, "stream")

        from serve.device.stream_client import SessionUnavailable

        images = iter(images)
        for pixels in images:
            start = time.perf_counter()
            features = head(np.ascontiguousarray(pixels, dtype=np.uint8))
            try:
                seq = session.send(variant, split, features)
            except SessionUnavailable:
                if self.transport == "stream" or in_flight:
                    raise
                self.transport, self._session = "http", None  # the edge has no sessions
                yield self.classify(pixels, variant, split)
                for rest in images:
                    yield self.classify(rest, variant, split)
                return
            in_flight.append((seq, len(session.pending[seq].message) if seq in session.pending else 0,
                              start))
            if len(in_flight) >= window:
                yield answered()
        while in_flight:
            yield answered()

