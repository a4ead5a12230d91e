"""`EdgeTail`: the edge half of split inference as a Serve deployment (the one that scales).

It is the ingress of an application of its own, mounted at `/v1/tail`, so that a device that
ran the head reaches a tail replica in one hop from Serve's ingress (HAProxy or the proxy): no
Router in between. `POST /v1/tail?variant=V&split=S` takes a wire frame; the variant is also the
multiplexed model id (header `serve_multiplexed_model_id`, which the device client sends), so
Serve routes frames to replicas that already hold the variant. The Router's `/v1/classify`
calls the same deployment through a handle (`finish`).

Like `DeviceHead`, one deployment holds any variant (loaded on first use, cached). A frame is
validated against the variant (tag, the split's shape, the batch bound) before decoding. It
reports the frame bytes and the measured tail work it holds (`record_autoscaling_stats`), the
signal of `serve.autoscaling.WorkInFlightPolicy`.
"""

import asyncio
import time

import torch
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse
from ray import serve

from pipeline.clock import ms_since
from pipeline.data import DataInfo
from pipeline.runtime import DEFAULT_RUNTIME
from pipeline.series import SeriesError
from pipeline.session_wire import Route, UnknownRoute
from serve.autoscaling import FRAMES_METRIC, WORK_METRIC, WorkMeter
from serve.bandwidth import EstimatorConfig
from serve.inputs import MULTIPLEX_HEADER, HttpError, media_type, read_body
from serve.link_board import LinkBoardClient
from serve.peer_warm import PeerWarmth
from serve.queries import TailQuery, check_variant, install_error_handlers, parse_query
from serve.replica import MAX_MODELS_PER_REPLICA, error_entry, load_runner, replica_health
from serve.runner import MAX_BATCH, RequestError, VariantRunner
from serve.series_source import SeriesMirror
from serve.stream import SessionTable, StreamLimits, run_session

INLINE_TAIL_MS = 1.0
IDLE_BEFORE_S = 0.001
FRAME_TYPES = ("application/octet-stream", "application/x-twostep-frame")
tail_api = FastAPI(title="twostep edge tail", version="1",
                   description="POST a wire frame made by a variant's head; see docs/serve.md.")


class _PrefixIsRoot:
    """ASGI middleware: a request for the route prefix itself (`/v1/tail`) is the app's `/`.
    Starlette would answer it with a redirect to `/v1/tail/`: one more round trip per frame."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        root = scope.get("root_path", "")
        if scope["type"] == "http" and root and scope["path"] == root:
            scope = {**scope, "path": root + "/", "raw_path": (root + "/").encode()}
        await self.app(scope, receive, send)


tail_api.add_middleware(_PrefixIsRoot)


install_error_handlers(tail_api)


def _answer(out) -> dict:
    return {"logits": out.logits.tolist(), "decode_ms": out.decode_ms, "tail_ms": out.tail_ms}




def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - outside a replica (tests of the class itself)
        return "local"


@serve.deployment(name="EdgeTail")
@serve.ingress(tail_api)
class EdgeTail:
    """Decodes a frame from a variant's head and runs the variant's tail."""

    def __init__(self, series: dict, torch_threads: int = 1, max_batch: int = MAX_BATCH,
                 max_body_bytes: int = 4 << 20, links_app: str | None = None,
                 estimator: dict | None = None, batch_size: int = 1,
                 runtime: str = DEFAULT_RUNTIME, stream: dict | None = None):
        torch.set_num_threads(torch_threads)
        self.runtime, self.threads = runtime, torch_threads
        self.series = SeriesMirror(series)  # reference from serve.series_source.publish_series
        self.info = DataInfo.from_dict(self.series.manifest.data)
        self.max_batch = max_batch
        self.max_body_bytes = max_body_bytes
        self.faults: dict[str, str] = {}
        self.bytes_in_flight = 0
        self.frames_in_flight = 0
        self._last_done = 0.0  # time.monotonic() when the last frame finished
        self.work = WorkMeter()
        self.replica_id = _replica_id()
        self.batch_size = batch_size
        if batch_size > 1:
            self._batched.set_max_batch_size(batch_size)
        self._links_app, self._estimator = links_app, estimator
        self._board: LinkBoardClient | None = None
        self.series_sha256 = self.series.ref["manifest_sha256"]
        self._session_runners: dict[str, VariantRunner] = {}
        self.sessions = SessionTable(StreamLimits(**(stream or {})), self.replica_id,
                                     self._link_board() if links_app else None)
        # loads what the other replicas serve, so that Serve's routing sends it frames too
        self.peers = PeerWarmth(self.replica_id, MAX_MODELS_PER_REPLICA, self._link_board,
                                self.get_runner, busy=lambda: self.frames_in_flight > 0,
                                cached=self._cached_variants) if links_app else None

    @serve.multiplexed(max_num_models_per_replica=MAX_MODELS_PER_REPLICA)
    async def get_runner(self, variant_id: str) -> VariantRunner:
        runner = await load_runner(self.series, variant_id, self.max_batch, self.faults,
                                   self.runtime, self.threads)
        if self.peers is not None:
            self.peers.note_loaded(variant_id)
        return runner

    def _cached_variants(self) -> list[str] | None:
        """The variants in Serve's model cache of this replica (Ray 2.60 keeps it on the object
        as `__serve_multiplex_wrapper`, made at the first load), or None where it cannot be read."""
        wrapper = getattr(self, "__serve_multiplex_wrapper", None)
        models = getattr(wrapper, "models", None) if wrapper is not None else {}
        return None if models is None else list(models)

    async def _run(self, variant_id: str, frame: bytes, split: str) -> dict:
        """One frame's answer (or error entry), counted in the autoscaling stats while it runs."""
        if self.batch_size > 1:
            return await self._counted(variant_id, split, len(frame), self._run_batched, frame)
        return await self._counted(variant_id, split, len(frame), self._run_one, frame)

    async def _run_batched(self, variant_id: str, split: str, frame: bytes, alone: bool) -> dict:
        return await self._batched((variant_id, frame, split))

    async def _counted(self, variant_id: str, split: str, nbytes: int, work, data) -> dict:
        """`await work(variant_id, split, data, alone)`, the frame counted in flight (bytes,
        frames, tail work) meanwhile."""
        key = (variant_id, split)
        if self.peers is not None:
            self.peers.note_used(variant_id)
        self.bytes_in_flight += nbytes
        self.frames_in_flight += 1
        # alone: no other frame held, and none just finished (under load the next request is
        # read right after the last one ends, while more wait unread in the socket buffers)
        alone = self.frames_in_flight == 1 and time.monotonic() - self._last_done > IDLE_BEFORE_S
        cost, result = self.work.start(key), {}
        try:
            result = await work(variant_id, split, data, alone)
            return result
        finally:
            # at once, not after the answer went: a session's stats, sent right after its first
            # answer, must hold that frame's tail time
            self.bytes_in_flight -= nbytes
            self.frames_in_flight -= 1
            self._last_done = time.monotonic()
            self.work.finish(key, cost, result.get("tail_ms"))

    async def _call(self, key: tuple[str, str], alone: bool, fn, *args):
        """`fn(*args)` inline or in a thread. Handing a tail to a thread costs about 0.6 ms here
        (measured in the handler, bench/bench_edge_path.py): a tail runs inline when the replica
        is idle but for this frame or when it was measured to take under INLINE_TAIL_MS;
        otherwise in a thread, keeping the event loop free for the frames queued behind it."""
        if alone or self.work.mean_ms.get(key, INLINE_TAIL_MS) < INLINE_TAIL_MS:
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    async def _run_one(self, variant_id: str, split: str, frame: bytes, alone: bool = False) -> dict:
        try:
            runner = await self.get_runner(variant_id)
            out = await self._call((variant_id, split), alone, runner.run_tail, frame, split)
        except (RequestError, SeriesError) as err:
            return error_entry(err)
        return _answer(out)

    async def run_tensor(self, variant_id: str, split: str, tensor, nbytes: int) -> dict:
        """The tail of a session frame already decoded (`serve.stream`), counted as `_run`."""
        return await self._counted(variant_id, split, nbytes, self._tail_tensor, tensor)

    async def _tail_tensor(self, variant_id: str, split: str, tensor, alone: bool) -> dict:
        try:
            # the runner a session's route opened, without the multiplexing call per frame
            runner = self._session_runners.get(variant_id) or await self.get_runner(variant_id)
            tail = runner.calls(split)[1]
            start = time.perf_counter_ns()
            logits = await self._call((variant_id, split), alone, tail, tensor)
            return {"logits": logits, "tail_ms": ms_since(start)}
        except (RequestError, SeriesError) as err:
            return error_entry(err)
        except Exception as err:  # noqa: BLE001 - a fault of the edge, answered as a 500
            return {"error": f"tail failed: {type(err).__name__}: {err}", "status": 500}

    async def open_route(self, route_id: int, variant_id: str, split: str) -> Route:
        """What a session fixes for frames of (variant, split) (`VariantRunner.session_route`);
        UnknownRoute names what the edge does not serve."""
        if not self.series.store.has(variant_id):
            raise UnknownRoute(f"unknown variant {variant_id!r}; GET /v1/variants lists them")
        try:
            runner = await self.get_runner(variant_id)
            route = runner.session_route(route_id, split)
        except (RequestError, SeriesError) as err:
            raise UnknownRoute(f"{variant_id}@{split}: {err}") from None
        self._session_runners[variant_id] = runner
        while len(self._session_runners) > MAX_MODELS_PER_REPLICA:
            self._session_runners.pop(next(iter(self._session_runners)))
        return route

    def report_uplink(self, link_id: str, uplink_bps: float) -> None:
        self._report(link_id, uplink_bps)

    def tail_mean_ms(self, variant_id: str, split: str) -> float | None:
        return self.work.mean_ms.get((variant_id, split))

    @tail_api.websocket("/stream")
    async def stream(self, websocket: WebSocket) -> None:
        """`WS /v1/tail/stream`: a device session (docs/wire-format.md, "Sessions")."""
        await run_session(websocket, self, self.sessions)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def _batched(self, requests: list[tuple[str, bytes, str]]) -> list[dict]:
        """Frames that arrive together: one tail call per (variant, split) among them."""
        groups: dict[tuple[str, str], list[int]] = {}
        for i, (variant_id, _, split) in enumerate(requests):
            groups.setdefault((variant_id, split), []).append(i)
        answers: list[dict] = [{}] * len(requests)
        for (variant_id, split), indices in groups.items():
            try:
                runner = await self.get_runner(variant_id)
                outs = await asyncio.to_thread(runner.run_tails, [requests[i][1] for i in indices], split)
            except (RequestError, SeriesError) as err:
                outs = [err] * len(indices)
            for i, out in zip(indices, outs, strict=True):
                answers[i] = error_entry(out) if isinstance(out, Exception) else _answer(out)
        return answers

    async def finish(self, frame: bytes, split: str) -> dict:
        """Tail of the request's variant (the multiplexed model id) on `frame`, made by its head
        at `split` (the Router's handle call).

        Returns:
            {"logits": [[...]], "decode_ms", "tail_ms", "server_ms"} or {"error", "status"}.
        """
        start = time.perf_counter_ns()
        result = await self._run(serve.get_multiplexed_model_id(), frame, split)
        return result if "error" in result else {**result, "server_ms": ms_since(start)}

    @tail_api.post("/")
    async def http_finish(self, request: Request) -> JSONResponse:
        """`POST /v1/tail?variant=V&split=S[&link=L&uplink_bps=B]` (`TailQuery`), body: the wire
        frame."""
        start = time.perf_counter_ns()
        query = parse_query(TailQuery, request.query_params)
        variant = check_variant(query.variant or request.headers.get(MULTIPLEX_HEADER),
                                self.series.store.has)
        split = query.split
        if not split:
            raise HttpError(400, "split is required")
        if split == "output":
            raise HttpError(400, "split 'output' runs everything on the device: nothing to finish")
        link_id, uplink = query.link, query.uplink_bps
        kind = media_type(request.headers.get("content-type"))
        # No Content-Type is a frame too: only frames come here, and a device saves 40 bytes
        if kind and kind not in FRAME_TYPES:
            raise HttpError(415, f"send the wire frame as {FRAME_TYPES[0]}, not {kind!r}")
        frame = await read_body(request.stream(), request.headers.get("content-length"),
                                self.max_body_bytes)
        if uplink is not None:
            self._report(link_id, uplink)
        result = await self._run(variant, frame, split)
        if "error" in result:
            raise HttpError(result["status"], result["error"])
        logits = result["logits"]
        predictions = [max(range(len(row)), key=row.__getitem__) for row in logits]
        return JSONResponse({
            "predictions": predictions, "labels": [self.info.classes[p] for p in predictions],
            "logits": logits, "variant": variant, "split": split, "bytes_received": len(frame),
            "link": link_id, "replica": self.replica_id,
            "timings_ms": {"decode": result["decode_ms"], "tail": result["tail_ms"],
                           "total": ms_since(start)}})

    def _report(self, link_id: str, uplink_bps: float) -> None:
        """Pass the device's measured uplink to the Routers' shared link state (no wait)."""
        if self._links_app is None:
            return
        self._link_board().report(link_id, uplink_bps)

    def _link_board(self) -> LinkBoardClient:
        if self._board is None:
            self._board = LinkBoardClient(self._links_app, EstimatorConfig(**(self._estimator or {})),
                                          wait_ready=False)  # reports queue until it is up
        return self._board

    async def check_health(self) -> None:
        """Serve's periodic health check; it also starts the session monitor of a replica that
        holds no session yet, so that a new replica reports its share and the others rebalance
        towards it, and the loop that loads the variants its peers serve."""
        self.sessions.ensure_monitor()
        if self.peers is not None:
            self.peers.ensure_running()

    def health(self) -> dict:
        """Where this replica reads the series, what it fetched, and variants it refused."""
        return {**replica_health(self.series, self.faults), "stream": self.sessions.health(),
                "peers": None if self.peers is None else self.peers.health()}

    def record_autoscaling_stats(self) -> dict[str, float]:
        return {"bytes_in_flight": float(self.bytes_in_flight), WORK_METRIC: self.work.in_flight_ms,
                FRAMES_METRIC: float(self.frames_in_flight), "sessions": float(len(self.sessions.sessions))}

