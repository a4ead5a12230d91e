"""`Router`: the HTTP ingress. Plans each request from the bandwidth estimate, runs head and tail.

Per request to `/v1/classify` it decodes the image, chooses (variant, split) with
`serve.planner.Planner` from the held bandwidth estimate of the request's link and its accuracy
floor or latency budget, awaits `DeviceHead` for the frame, carries the frame over the (possibly
emulated) link and awaits `EdgeTail` for the logits: two handle hops, bytes both ways. The time
each transfer took feeds the link's estimator. A head or tail call that fails because its
replica died is retried (the frame is kept, so retrying is safe). The HTTP API is documented in
docs/serve.md; every bad request gets a 4xx JSON `{"error": ...}` and the replica serves on.
"""

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Annotated

import numpy as np
import PIL.Image  # noqa: F401  (imported here so the first request does not pay for it)
import torch
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from pipeline.clock import ms_since
from pipeline.codec import codec_config, encode_frame, variant_tag
from pipeline.cost import Link, latency_breakdown
from pipeline.data import DataInfo, normalize
from pipeline.onnx_graphs import head_graph
from pipeline.runtime import profile_runtime
from pipeline.selection import Candidate, NoFeasibleCandidate, ranked_rows
from pipeline.traces import TraceError, load_trace, parse_trace
from serve.deadline import censored_seconds, deadline_ms, fallback_candidate
from serve.inputs import HttpError, decode_pixels, read_body, read_json
from serve.link import LinkEmulator, LinkSaturated, check_link_settings
from serve.link_board import LinkBoardClient
from serve.plan_table import plan_table as build_plan_table
from serve.planner import Planner, constraint_key
from serve.profiles import resolve_profiles
from serve.queries import (
    ClassifyQuery,
    ConstraintQuery,
    HeadQuery,
    LinkQuery,
    NoQuery,
    PlanQuery,
    PlanTableQuery,
    check_variant,
    install_error_handlers,
    parse_query,
)
from serve.replica import replica_health
from serve.series_source import SeriesMirror
from serve.settings import AppArgs, tail_app_name
from serve.weights import pack_head

logger = logging.getLogger("ray.serve")
api = FastAPI(title="twostep split inference", version="1",
              description="Bandwidth-aware split inference of a pruned model series. See docs/serve.md.")

MAX_JSON_BYTES = 4096
MAX_TRACE_JSON_BYTES = 1 << 20  # PUT /v1/link with a trace: ~50,000 steps
MAX_DEVICE_TIMES_BYTES = 256 * 1024  # ~4,000 (variant, split) times
HEAD_CACHE = 32
PLAN_TABLE_CACHE = 64



def _replica_failure(err: BaseException) -> bool:
    """Whether `err` means the replica died or is unreachable (so a retry may succeed)."""
    if isinstance(err, RayActorError | DeploymentUnavailableError | BackPressureError):
        return True
    return isinstance(err, RayTaskError) and isinstance(getattr(err, "cause", None), RayActorError)


async def call_with_retries(call: Callable[[], Awaitable[dict]], what: str, retries: int,
                            timeout_s: float) -> tuple[dict, int]:
    """(result of `await call()`, failed attempts before it), retrying when a replica died.

    Serve re-routes requests a dead replica had not yet accepted; one it was running fails with
    `ActorDiedError`, and is sent again here (head and tail calls are idempotent). A result with
    an `error` entry is the replica reporting a client error: HttpError with its status. 503
    when every attempt fails, 504 when one takes longer than `timeout_s`.
    """
    last: BaseException | None = None
    for attempt in range(retries + 1):
        try:
            result = await asyncio.wait_for(call(), timeout_s)
        except TimeoutError:
            raise HttpError(504, f"{what} did not answer in {timeout_s:g} s") from None
        except Exception as err:
            if not _replica_failure(err):
                raise
            last = err
            logger.warning("%s failed (attempt %d): %s", what, attempt + 1, type(err).__name__)
            await asyncio.sleep(min(0.2 * 2 ** attempt, 2.0))
            continue
        if "error" in result:
            raise HttpError(result["status"], result["error"])
        return result, attempt
    raise HttpError(503, f"{what} unavailable after {retries + 1} attempts: {type(last).__name__}")


install_error_handlers(api)


@api.exception_handler(NoFeasibleCandidate)
async def _infeasible(request: Request, err: NoFeasibleCandidate) -> JSONResponse:
    closest = ranked_rows(err.closest)
    return JSONResponse({"error": str(err), "closest": closest}, status_code=422)


@api.exception_handler(LinkSaturated)
async def _saturated(request: Request, err: LinkSaturated) -> JSONResponse:
    return JSONResponse({"error": str(err)}, status_code=503)


@serve.deployment(name="Router")
@serve.ingress(api)
class Router:
    """HTTP ingress: request parsing, planning, the head -> link -> tail handoff, the link API."""

    def __init__(self, head: DeploymentHandle, args: dict, series: dict,
                 profile_docs: dict | None = None):
        self.args = AppArgs.model_validate(args)
        self.head = head
        self._tail: DeploymentHandle | None = None
        self.series = SeriesMirror(series)  # reference from serve.series_source.publish_series
        self.store = self.series.store
        manifest = self.store.manifest
        self.info = DataInfo.from_dict(manifest["data"])
        base = manifest.get("base") or self.store.ids()[0]
        docs = profile_docs or {}
        profiles = resolve_profiles(
            self.store.directory, manifest, docs.get("edge"), docs.get("device"),
            self.args.slowdown, self.args.ms_per_mmac, self.args.layer_ms,
            calibration_model=None if self.args.ms_per_mmac is not None
            else self.series.load_model(base)[:2], runtime=self.args.runtime,
        )
        self.profile_source = profiles.source
        profiled = profile_runtime(profiles.edge)
        if "estimated" not in profiles.edge and profiled != self.args.runtime:
            self.profile_source += (f"; WARNING: profiled with {profiled}, served with "
                                    f"{self.args.runtime} (rerun twostep profile --runtime "
                                    f"{self.args.runtime}): planned times are off")
            logger.warning(self.profile_source)
        self.planner = Planner(manifest, profiles.device, profiles.edge, self.args.bytes_stat,
                               self.args.baselines, self.args.switch_margin)
        self.default_floor, self.default_budget = self.args.accuracy_floor, self.args.latency_budget_ms
        if self.default_floor is None and self.default_budget is None:
            self.default_floor = max(0.0, self.planner.best_accuracy - self.args.accuracy_drop)
        context = serve.get_replica_context()
        self.replica = context.replica_id.unique_id
        self.tail_app = tail_app_name(context.app_name)
        self.board = LinkBoardClient(context.app_name, self.args.estimator_config())
        self.link = LinkEmulator(self.args.link_bandwidth_bps, self.args.link_rtt_ms)
        if self.args.link_trace:
            self.link.replay(load_trace(self.args.link_trace).sped_up(self.args.link_trace_speed))
        self.codec = codec_config(manifest["codec"])
        self._heads: OrderedDict[tuple[str, str, str], tuple[bytes, str]] = OrderedDict()
        self._tables: OrderedDict[tuple, list[dict]] = OrderedDict()
        self._probes: dict[str, asyncio.Task] = {}
        self.deadline_hits = 0
        self._fallbacks: dict[float | None, Candidate | None] = {}
        logger.info("router ready: %d variants, %d candidates; %s", len(self.planner.variants),
                    len(self.planner.table), self.profile_source)

    # ---- helpers ----
    @property
    def tail(self) -> DeploymentHandle:
        """EdgeTail of the tail app (deployed beside this one), looked up on first use."""
        if self._tail is None:
            try:
                self._tail = serve.get_deployment_handle("EdgeTail", app_name=self.tail_app)
            except Exception as err:  # noqa: BLE001 - reported to the client
                raise HttpError(503, f"the tail application {self.tail_app!r} is not running "
                                     f"({type(err).__name__}); deploy both apps (serve.app.deploy)") from None
        return self._tail

    def _previous(self, choice: tuple[str, str] | list | None) -> Candidate | None:
        """The candidate in force for a planning key (None if none, or no longer served)."""
        if choice is None:
            return None
        try:
            return self.planner.candidate(*choice)
        except (KeyError, ValueError):
            return None

    def _rtt_ms(self) -> float:
        return self.link.rtt_ms if self.link.enabled else self.args.rtt_ms

    def _constraint(self, query: ConstraintQuery) -> tuple[float | None, float | None]:
        """(accuracy_floor, latency_budget_ms) of a request, else the server's defaults."""
        if query.accuracy_floor is None and query.latency_budget_ms is None:
            return self.default_floor, self.default_budget
        return query.accuracy_floor, query.latency_budget_ms

    def _variant(self, variant_id: str | None) -> str:
        return check_variant(variant_id, self.planner.variants.__contains__)

    def _split(self, variant_id: str, split: str | None) -> str:
        splits = self.planner.splits_of(variant_id)
        if split not in splits:
            raise HttpError(400, f"variant {variant_id!r} is served at splits {', '.join(splits)}; "
                                 f"got {split!r}")
        return split

    async def _call(self, handle: DeploymentHandle, variant_id: str, method: str, *args) -> tuple[dict, int]:
        target = getattr(handle.options(multiplexed_model_id=variant_id), method)
        return await call_with_retries(lambda: target.remote(*args), method, self.args.retries,
                                       self.args.call_timeout_s)

    def _encode_input(self, variant_id: str, pixels) -> tuple[bytes, float]:
        """The wire frame of the normalised input pixels (what the head sends at split `input`)."""
        start = time.perf_counter_ns()
        with torch.inference_mode():
            x = normalize(torch.from_numpy(np.ascontiguousarray(pixels)), self.info)
        return encode_frame(x, self.codec, variant_tag(variant_id)), ms_since(start)

    def _fallback(self, floor: float | None) -> Candidate | None:
        """The on-device fallback for `floor`, found once per floor (not per frame)."""
        if floor not in self._fallbacks:
            if len(self._fallbacks) >= 64:
                self._fallbacks.clear()
            self._fallbacks[floor] = fallback_candidate(self.planner.table.candidates, floor)
        return self._fallbacks[floor]

    async def _carry(self, link_id: str, nbytes: int, floor: float | None,
                     deadline: bool = True) -> tuple[Candidate | None, float | None]:
        """Carry a frame over the emulated link and learn its time on the wire; past its deadline
        (planned requests: a forced split is kept), stop waiting and return the on-device
        fallback that finishes the request instead. Returns (that fallback or None, the deadline)."""
        transfer = self.link.schedule(nbytes)
        fallback = self._fallback(floor) if deadline else None
        limit_ms = deadline_ms(fallback, self.args.frame_deadline_ms, self.args.deadline_factor)
        if limit_ms is None or transfer.total_s * 1000.0 <= limit_ms:
            await asyncio.sleep(transfer.total_s)
            self.board.add_transfer(link_id, nbytes, transfer.wire_s + transfer.rtt_s, self.link.rtt_ms,
                                    exact=True)
            return None, limit_ms
        await asyncio.sleep(limit_ms / 1000.0)
        # slower than nbytes in that time: what the estimate must learn
        wire = censored_seconds(limit_ms / 1000.0, transfer.queue_s)
        self.board.add_transfer(link_id, nbytes, wire + transfer.rtt_s, self.link.rtt_ms, exact=True)
        self.deadline_hits += 1
        logger.info("link %s: frame of %d B past its %.0f ms deadline; finished on the device (%s)",
                    link_id, nbytes, limit_ms, fallback.label)
        return fallback, limit_ms

    def _maybe_probe(self, link_id: str, age_s: float) -> None:
        """Send a probe over the emulated link when its estimate has had no sample for a while,
        so a plan that sends nothing (all on device) can still see the link get better."""
        if (not self.link.enabled or link_id in self._probes
                or age_s < self.args.probe_interval_s):
            return

        async def probe() -> None:
            try:
                transfer = await self.link.transmit(self.args.probe_bytes)
                self.board.add_transfer(link_id, self.args.probe_bytes, transfer.total_s,
                                        self.link.rtt_ms, exact=True)
            except LinkSaturated:
                pass
            finally:
                self._probes.pop(link_id, None)

        self._probes[link_id] = asyncio.get_running_loop().create_task(probe())

    # ---- endpoints ----
    @api.get("/v1/health")
    async def health(self) -> dict:
        """This replica's state, and that of one head and one tail replica (where each reads
        the series, what it fetched, variants it refused): status "degraded" if any refused."""
        replicas = {"router": replica_health(self.series, {})}
        for name in ("head", "tail"):
            try:
                handle = self.head if name == "head" else self.tail  # the tail app may be missing
                replicas[name] = await asyncio.wait_for(handle.health.remote(), self.args.call_timeout_s)
            except Exception as err:  # noqa: BLE001 - reported, not raised
                replicas[name] = {"faults": {"*": f"unreachable: {type(err).__name__}: {err}"}}
        faulty = any(r.get("faults") for r in replicas.values())
        return {"status": "degraded" if faulty else "ok", "variants": len(self.planner.variants),
                "candidates": len(self.planner.table), "profiles": self.profile_source,
                "link": self.link.snapshot(), "deadline_hits": self.deadline_hits,
                "probes_in_flight": sorted(self._probes), "replicas": replicas}

    @api.get("/v1/variants")
    async def variants(self) -> dict:
        manifest = self.store.manifest
        listed = []
        for vid, entry in self.planner.variants.items():
            accuracy = entry.get("test_accuracy")
            listed.append({
                "id": vid, "step": entry["step"], "layer": entry.get("layer"),
                "accuracy": accuracy if accuracy is not None else entry.get("val_accuracy"),
                "macs": entry["macs"], "spec": entry["spec"], "sha256": entry["sha256"],
                "splits": self.planner.splits_of(vid),
                "bytes_mean": {s: v["bytes_mean"] for s, v in entry["splits"].items()},
            })
        return {"base": manifest.get("base"), "data": manifest["data"], "codec": manifest["codec"],
                "variants": listed}

    @api.get("/v1/variants/{variant_id}/head")
    async def head_weights(self, variant_id: str, query: Annotated[HeadQuery, Query()]) -> Response:
        """The head at `split` for a device: its safetensors weights (`format=safetensors`, the
        default) or its ONNX graph from pixels to features (`format=onnx`: the graph `twostep
        export` recorded, else the same graph exported here)."""
        vid = self._variant(variant_id)
        split = self._split(vid, query.split)
        fmt = query.format
        if fmt == "onnx" and split == "input":
            raise HttpError(400, "split 'input' has no head: send the pixels (POST /v1/classify)")
        key = (vid, split, fmt)
        if key not in self._heads:
            self._heads[key] = await asyncio.to_thread(self._pack_head, vid, split, fmt)
            while len(self._heads) > HEAD_CACHE:
                self._heads.popitem(last=False)
        self._heads.move_to_end(key)
        data, sha = self._heads[key]
        return Response(data, media_type="application/octet-stream", headers={
            "X-Twostep-Sha256": sha, "ETag": f'"{sha}"', "X-Twostep-Variant": vid,
            "X-Twostep-Split": split})

    def _pack_head(self, vid: str, split: str, fmt: str) -> tuple[bytes, str]:
        if fmt == "onnx":
            graph = self.series.graph_bytes(vid, split, "head")
            if graph is None:
                model, spec, _ = self.series.load_model(vid)
                graph = head_graph(model, (spec.in_channels, spec.input_size, spec.input_size),
                                   DataInfo.from_dict(self.series.manifest["data"]), split)
            return graph, hashlib.sha256(graph).hexdigest()
        model, spec, _ = self.series.load_model(vid)
        return pack_head(model, spec, vid, split)

    @api.get("/v1/plan")
    async def plan(self, query: Annotated[PlanQuery, Query()]) -> dict:
        return await self._plan(query, None)

    @api.post("/v1/plan")
    async def plan_with_device_times(self, request: Request,
                                     query: Annotated[PlanQuery, Query()]) -> dict:
        """`GET /v1/plan`, with the device's own measured head times as the JSON body
        `{"device_ms": {"VARIANT": {"SPLIT": ms}}}` (docs/serve.md)."""
        return await self._plan(query, await self._device_times(request))

    async def _plan(self, query: PlanQuery, device_ms: dict | None) -> dict:
        floor, budget = self._constraint(query)
        slowdown, overhead = query.device_slowdown, query.device_overhead_ms
        bandwidth, source = query.bandwidth_bps, "given"
        if bandwidth is None:
            bandwidth, source = (await self.board.observe(query.link))["estimate_bps"], "estimate"
        link = Link(bandwidth, self._rtt_ms() if query.rtt_ms is None else query.rtt_ms)
        decision = self.planner.plan(link, floor, budget, query.top, device_slowdown=slowdown,
                                     frames_only=query.frames_only,
                                     device_overhead_ms=overhead, device_ms=device_ms)
        ranked = ranked_rows(decision.ranked)
        return {"bandwidth_bps": link.bandwidth_bps, "rtt_ms": link.rtt_ms, "bandwidth_source": source,
                "device_slowdown": slowdown, "device_overhead_ms": overhead,
                "device_times": len(device_ms or ()),
                "accuracy_floor": floor, "latency_budget_ms": budget, "best": ranked[0],
                "ranked": ranked}

    @api.get("/v1/plan/table")
    async def plan_table(self, query: Annotated[PlanTableQuery, Query()]) -> dict:
        """The best (variant, split) over all bandwidths for one constraint and device, as
        intervals: a device caches it and plans locally (serve/plan_table.py)."""
        return await self._plan_table(query, None)

    @api.post("/v1/plan/table")
    async def plan_table_with_device_times(self, request: Request,
                                           query: Annotated[PlanTableQuery, Query()]) -> dict:
        """`GET /v1/plan/table` with the device's measured head times (as `POST /v1/plan`)."""
        return await self._plan_table(query, await self._device_times(request))

    async def _device_times(self, request: Request) -> dict:
        document = await read_json(request.stream(), request.headers.get("content-length"),
                                   MAX_DEVICE_TIMES_BYTES)
        if not isinstance(document, dict) or set(document) != {"device_ms"}:
            raise HttpError(400, 'body must be {"device_ms": {"VARIANT": {"SPLIT": ms}}}')
        try:
            return self.planner.device_times(document["device_ms"])
        except ValueError as err:
            raise HttpError(400, str(err)) from None

    async def _plan_table(self, query: PlanTableQuery, device_ms: dict | None) -> dict:
        floor, budget = self._constraint(query)
        slowdown, overhead = query.device_slowdown, query.device_overhead_ms
        rtt = self._rtt_ms() if query.rtt_ms is None else query.rtt_ms

        table = self.planner.table_for(slowdown, overhead, query.frames_only, device_ms)

        def best_at(link: Link) -> Candidate:
            return table.select(link, floor, budget, 1).best

        # a table costs a few hundred plans: cache the recent ones, so that many devices with
        # the same constraint (or one asking again) cost nothing
        key = (floor, budget, rtt, slowdown, overhead, query.frames_only,
               frozenset((device_ms or {}).items()))
        rows = self._tables.pop(key, None)
        if rows is None:
            rows = build_plan_table(best_at, rtt)
        self._tables[key] = rows
        while len(self._tables) > PLAN_TABLE_CACHE:
            self._tables.popitem(last=False)
        return {"accuracy_floor": floor, "latency_budget_ms": budget, "rtt_ms": rtt,
                "device_slowdown": slowdown, "device_overhead_ms": overhead,
                "device_times": len(device_ms or ()),
                "frames_only": query.frames_only, "switch_margin": self.args.switch_margin,
                "series": self.series.ref["manifest_sha256"],
                "rows": rows}

    @api.get("/v1/link")
    async def get_link(self, query: Annotated[LinkQuery, Query()]) -> dict:
        return {"link": query.link, "emulation": self.link.snapshot(),
                "estimate": await self.board.snapshot(query.link)}

    @api.put("/v1/link")
    async def put_link(self, request: Request, query: Annotated[NoQuery, Query()]) -> dict:
        if not self.args.emulate_link:
            raise HttpError(403, "link emulation is off on this server: start it with "
                                 "--emulate-link (twostep serve) or emulate_link: true")
        settings = await read_json(request.stream(), request.headers.get("content-length"),
                                   MAX_TRACE_JSON_BYTES)
        fixed, replay = {"bandwidth_bps", "rtt_ms"}, {"trace", "trace_speed", "rtt_ms"}
        if not isinstance(settings, dict) or not (set(settings) <= fixed or set(settings) <= replay):
            raise HttpError(400, 'body must be {"bandwidth_bps": number or null, "rtt_ms": number} or '
                                 '{"trace": "time_s Mbit/s lines", "trace_speed": number, "rtt_ms": number}')
        try:
            if "trace" in settings:
                if not isinstance(settings["trace"], str):
                    raise ValueError("trace must be the text of a trace file ('time_s Mbit/s' lines)")
                trace = parse_trace(settings["trace"], "PUT /v1/link")
                trace = trace.sped_up(settings.get("trace_speed", 1.0))
                self.link.replay(trace, settings.get("rtt_ms", self.link.rtt_ms))
            else:
                self.link.configure(*check_link_settings(settings.get("bandwidth_bps"),
                                                         settings.get("rtt_ms", 0.0)))
        except (ValueError, TraceError) as err:
            raise HttpError(400, str(err)) from None
        return {"emulation": self.link.snapshot()}

    # The two inference routes answer with JSONResponse directly: FastAPI's generic encoding of
    # a returned dict costs a few hundred microseconds per request for nothing here.
    @api.post("/v1/classify")
    async def classify(self, request: Request) -> JSONResponse:
        """`POST /v1/classify` (`ClassifyQuery`), body: an image or raw pixels."""
        start = time.perf_counter_ns()
        query = parse_query(ClassifyQuery, request.query_params)
        floor, budget = self._constraint(query)
        link_id, uplink = query.link, query.uplink_bps
        forced = query.variant is not None or query.split is not None
        if forced:
            vid = self._variant(query.variant)
            split = self._split(vid, query.split)
        body = await read_body(request.stream(), request.headers.get("content-length"),
                               self.args.max_body_bytes)
        parse_start = time.perf_counter_ns()
        pixels = decode_pixels(body, request.headers.get("content-type"), query.shape,
                               self.info.in_channels, self.info.input_size, self.args.max_image_pixels)
        parse_ms = ms_since(parse_start)
        plan_start = time.perf_counter_ns()
        key = f"{link_id}|{constraint_key(floor, budget)}"
        state = await self.board.observe(link_id, uplink, None if forced else key)
        link = Link(state["estimate_bps"], self._rtt_ms())
        kept = switched = False
        if forced:
            candidate = self.planner.candidate(vid, split)
            breakdown = latency_breakdown(candidate.head_ms, candidate.bytes_sent, candidate.tail_ms, link)
        else:
            choice = self.planner.decide(self._previous(state["choice"]), link, floor, budget)
            candidate, breakdown = choice.candidate, choice.breakdown
            kept, switched = choice.kept, choice.switched
            vid, split = candidate.variant_id, candidate.split
            if state["choice"] != (vid, split):
                self.board.remember(key, vid, split)
        plan_ms = ms_since(plan_start)
        self._maybe_probe(link_id, state["age_s"])

        timings = {"parse": parse_ms, "plan": plan_ms}
        head_start = time.perf_counter_ns()
        if split == "input":
            # Nothing runs before the split: encode the pixels here and skip the head's hop.
            frame, encode_ms = self._encode_input(vid, pixels)
            head, retries = {"head_ms": 0.0, "encode_ms": encode_ms}, 0
        else:
            head, retries = await self._call(self.head, vid, "run", split, pixels.tobytes(), pixels.shape)
            frame = head["frame"]
        timings.update(head=head["head_ms"], encode=head["encode_ms"], head_call=ms_since(head_start))
        bytes_sent = 0 if frame is None else len(frame)
        link_ms = decode_ms = tail_ms = 0.0
        given_up = limit_ms = None
        if frame is None:
            logits = head["logits"][0]
        else:
            link_start = time.perf_counter_ns()
            if self.link.enabled:
                given_up, limit_ms = await self._carry(link_id, bytes_sent, floor, deadline=not forced)
            link_ms = ms_since(link_start)
        given_up_from = None
        if given_up is not None:  # the frame missed its deadline: the device finishes it
            given_up_from = {"variant": vid, "split": split}
            candidate = given_up
            vid, split = candidate.variant_id, candidate.split
            head, fallback_retries = await self._call(self.head, vid, "run", split, pixels.tobytes(),
                                                      pixels.shape)
            retries += fallback_retries
            logits = head["logits"][0]
            timings.update(head=timings["head"] + head["head_ms"])
        elif frame is not None:
            tail_start = time.perf_counter_ns()
            tail, tail_retries = await self._call(self.tail, vid, "finish", frame, split)
            tail_call_ms = ms_since(tail_start)
            retries += tail_retries
            if not self.link.enabled and self.args.measure_handoff:
                handoff_s = max(0.0, tail_call_ms - tail["server_ms"]) / 1000.0
                self.board.add_transfer(link_id, bytes_sent, handoff_s, self.args.rtt_ms)
            logits = tail["logits"][0]
            decode_ms, tail_ms = tail["decode_ms"], tail["tail_ms"]
            timings.update(tail_call=tail_call_ms)
        timings.update(link=link_ms, decode=decode_ms, tail=tail_ms)
        timings["total"] = ms_since(start)
        work = timings["head"] + timings["encode"] + link_ms + decode_ms + tail_ms
        timings["overhead"] = max(0.0, timings["total"] - work)
        prediction = max(range(len(logits)), key=logits.__getitem__)
        return JSONResponse({
            "prediction": prediction, "label": self.info.classes[prediction], "logits": logits,
            "variant": vid, "split": split, "strategy": candidate.strategy,
            "accuracy": candidate.accuracy, "bytes_sent": bytes_sent, "link": link_id,
            "bandwidth_bps": link.bandwidth_bps, "forced": forced, "kept": kept, "switched": switched,
            "past_deadline": given_up is not None, "deadline_ms": limit_ms, "given_up_from": given_up_from,
            "planned_ms": {"device": breakdown.device_ms, "transfer": breakdown.transfer_ms,
                           "edge": breakdown.edge_ms, "total": breakdown.total_ms},
            "timings_ms": timings, "retries": retries, "router": self.replica,
        })
