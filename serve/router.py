"""`Router`: the HTTP ingress. Plans each request from the bandwidth estimate, runs head and tail.

Per request to `/v1/classify` it decodes the image, chooses (variant, split) with
`serve.planner.Planner` from the held bandwidth estimate of the request's link and its accuracy
floor or latency budget, awaits `DeviceHead` for the frame, carries the frame over the (possibly
emulated) link and awaits `EdgeTail` for the logits: two handle hops, bytes both ways
(`serve/classify.py`). The time each transfer took feeds the link's estimator
(`serve/link_follow.py`). A head or tail call that fails because its replica died is retried
(`serve/retries.py`). The HTTP API is documented in docs/serve.md; every bad request gets a 4xx
JSON `{"error": ...}` and the replica serves on.
"""

import asyncio
import logging
import time
from typing import Annotated

import PIL.Image  # noqa: F401  (imported here so the first request does not pay for it)
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from pipeline.codec import codec_config
from pipeline.cost import Link
from pipeline.data import DataInfo
from pipeline.selection import NoFeasibleCandidate, ranked_rows
from pipeline.traces import load_trace
from serve.classify import Classifier
from serve.head_shop import HeadShop
from serve.inputs import HttpError, read_json
from serve.link import LinkEmulator, LinkSaturated
from serve.link_board import LinkBoardClient
from serve.link_follow import LinkFollower
from serve.planning import Plans, build_planner
from serve.queries import (
    ClassifyQuery,
    HeadQuery,
    LinkQuery,
    NoQuery,
    PlanQuery,
    PlanTableQuery,
    install_error_handlers,
    parse_query,
)
from serve.replica import replica_health
from serve.series_source import SeriesMirror
from serve.settings import AppArgs, tail_app_name

logger = logging.getLogger("ray.serve")
api = FastAPI(title="twostep split inference", version="1",
              description="Bandwidth-aware split inference of a pruned model series. See docs/serve.md.")

MAX_TRACE_JSON_BYTES = 1 << 20  # PUT /v1/link with a trace: ~50,000 steps
MAX_DEVICE_TIMES_BYTES = 256 * 1024  # ~4,000 (variant, split) times

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
    """HTTP ingress: request parsing and the routes; the work is in the parts it holds."""

    def __init__(self, head: DeploymentHandle, args: dict, series: dict,
                 profile_docs: dict | None = None):
        self.args = AppArgs.model_validate(args)
        self.head = head
        self._tail: DeploymentHandle | None = None
        self.series = SeriesMirror(series)  # reference from serve.series_source.publish_series
        manifest = self.series.store.manifest
        self.info = DataInfo.from_dict(manifest.data)
        self.planner, self.profile_source = build_planner(self.series, self.args, profile_docs)
        self.plans = Plans(self.planner, self.args, self.series.ref["manifest_sha256"])
        context = serve.get_replica_context()
        self.tail_app = tail_app_name(context.app_name)
        self.board = LinkBoardClient(context.app_name, self.args.estimator_config())
        link = LinkEmulator(self.args.link_bandwidth_bps, self.args.link_rtt_ms)
        if self.args.link_trace:
            link.replay(load_trace(self.args.link_trace).sped_up(self.args.link_trace_speed))
        self.follower = LinkFollower(self.args, self.board, link, lambda: self.planner.table.candidates)
        self.heads = HeadShop(self.series, self.info)
        self.classifier = Classifier(self.args, self.info, codec_config(manifest.codec), self.plans,
                                     self.follower, self.board, head, lambda: self.tail,
                                     context.replica_id.unique_id)
        logger.info("router ready: %d variants, %d candidates; %s", len(self.planner.variants),
                    len(self.planner.table), self.profile_source)

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
                **self.follower.state(), "replicas": replicas}

    @api.get("/v1/variants")
    async def variants(self) -> dict:
        return self.plans.listing(self.series.store.manifest)

    @api.get("/v1/variants/{variant_id}/head")
    async def head_weights(self, variant_id: str, query: Annotated[HeadQuery, Query()]) -> Response:
        """The head at `split` for a device: its safetensors weights (`format=safetensors`, the
        default) or its ONNX graph from pixels to features (`format=onnx`: the graph `twostep
        export` recorded, else the same graph exported here)."""
        vid = self.plans.variant(variant_id)
        split = self.plans.split(vid, query.split)
        if query.format == "onnx" and split == "input":
            raise HttpError(400, "split 'input' has no head: send the pixels (POST /v1/classify)")
        data, sha = await self.heads.get(vid, split, query.format)
        return Response(data, media_type="application/octet-stream", headers={
            "X-Twostep-Sha256": sha, "ETag": f'"{sha}"', "X-Twostep-Variant": vid,
            "X-Twostep-Split": split})

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
        bandwidth, source = query.bandwidth_bps, "given"
        if bandwidth is None:
            bandwidth, source = (await self.board.observe(query.link))["estimate_bps"], "estimate"
        link = Link(bandwidth, self.follower.rtt_ms() if query.rtt_ms is None else query.rtt_ms)
        return self.plans.plan(query, link, source, device_ms)

    @api.get("/v1/plan/table")
    async def plan_table(self, query: Annotated[PlanTableQuery, Query()]) -> dict:
        """The best (variant, split) over all bandwidths for one constraint and device, as
        intervals: a device caches it and plans locally (serve/plan_table.py)."""
        return self._plan_table(query, None)

    @api.post("/v1/plan/table")
    async def plan_table_with_device_times(self, request: Request,
                                           query: Annotated[PlanTableQuery, Query()]) -> dict:
        """`GET /v1/plan/table` with the device's measured head times (as `POST /v1/plan`)."""
        return self._plan_table(query, await self._device_times(request))

    def _plan_table(self, query: PlanTableQuery, device_ms: dict | None) -> dict:
        rtt = self.follower.rtt_ms() if query.rtt_ms is None else query.rtt_ms
        return self.plans.plan_table(query, rtt, device_ms)

    async def _device_times(self, request: Request) -> dict:
        return self.plans.device_times(await read_json(
            request.stream(), request.headers.get("content-length"), MAX_DEVICE_TIMES_BYTES))

    @api.get("/v1/link")
    async def get_link(self, query: Annotated[LinkQuery, Query()]) -> dict:
        return {"link": query.link, "emulation": self.follower.link.snapshot(),
                "estimate": await self.board.snapshot(query.link)}

    @api.put("/v1/link")
    async def put_link(self, request: Request, query: Annotated[NoQuery, Query()]) -> dict:
        if not self.args.emulate_link:
            raise HttpError(403, "link emulation is off on this server: start it with "
                                 "--emulate-link (twostep serve) or emulate_link: true")
        return self.follower.configure(await read_json(
            request.stream(), request.headers.get("content-length"), MAX_TRACE_JSON_BYTES))

    # The inference route answers with JSONResponse directly: FastAPI's generic encoding of a
    # returned dict costs a few hundred microseconds per request for nothing here.
    @api.post("/v1/classify")
    async def classify(self, request: Request) -> JSONResponse:
        """`POST /v1/classify` (`ClassifyQuery`), body: an image or raw pixels."""
        start = time.perf_counter_ns()
        query = parse_query(ClassifyQuery, request.query_params)
        return JSONResponse(await self.classifier.run(start, query, request))
