"""The device path against Ray Serve's own one-hop floor, per ingress, side by side in one run.

For each ingress (Serve's default proxy, then HAProxy with the throughput-optimised mode), a
child process starts its own Ray session (the ingress is chosen when Ray starts) and deploys:
- the floor: a no-op FastAPI ingress deployment answering `POST /noop` with a 60-byte body, no
  model (Ray Serve's own cost for one HTTP request into one replica);
- twostep's two apps (`serve.app.deploy`, one fixed tail replica) on a series (default: a tiny
  random series built here; `--series DIR` for a real one).
It then sends, interleaved so that other load hits all alike, `--requests` sequential requests
of each over one keep-alive connection each: the no-op, and a device's frame to `/v1/tail`
exactly as `serve.device.client.DeviceClient.send_frame` sends it; and over one WebSocket each, a
16-byte message to a no-op echo deployment (Serve's floor for a session message), and the same
frame over a device session (`serve.device.stream_client.DeviceSession`, asking for timings), whose
fixed time is its wall time less the decode and tail time the edge reports in that frame's answer
(target: <= 1.2x the echo, below the HTTP path's fixed time). An echo's time depends on what ran
just before it: the loop also times an echo of the frame's own size after a session frame, and a
streamed phase (20 messages in a row on each WebSocket, blocks alternating); docs/serve.md,
"Which echo is the floor". The device path's *fixed* time per
request is its wall time minus the tail's own decode and compute time (reported by the
replica); the ratio fixed / floor is the target (<= 1.5x). Bytes: the HTTP bytes each request
and its answer put on the wire (counted on the client's socket), and how they split.

    .venv/bin/python bench/bench_edge_path.py [--series DIR] [--requests 300]

Also lists the TCP ports the Serve processes listen on, with their addresses.
"""

# No `from __future__ import annotations`: FastAPI resolves the no-op route's annotations.

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if os.environ.get("PYTHONPATH"):  # a child measuring another checkout (--tree)
    sys.path.insert(0, os.environ["PYTHONPATH"])
else:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # synthetic_series

NOOP_BODY = b"x" * 60
STREAM_BLOCK = 20


def _free_port() -> int:
    # not twostep.local_cluster.free_port: a child may run against an older checkout (--tree)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CountingConnection(http.client.HTTPConnection):
    """A keep-alive connection that counts the bytes it sends and receives."""

    sent = received = 0

    def connect(self):
        super().connect()
        sock, outer = self.sock, self
        self.raw_sock = sock

        class Counted:
            def sendall(self, data):
                outer.sent += len(data)
                return sock.sendall(data)

            def makefile(self, *args, **kwargs):
                raw = sock.makefile(*args, **kwargs)

                class Reader:
                    def __getattr__(self, name):
                        return getattr(raw, name)

                    def readinto(self, b):
                        n = raw.readinto(b)
                        outer.received += n or 0
                        return n

                    def read(self, *a):
                        data = raw.read(*a)
                        outer.received += len(data)
                        return data

                    def readline(self, *a):
                        data = raw.readline(*a)
                        outer.received += len(data)
                        return data

                    def peek(self, *a):
                        return raw.peek(*a)

                return Reader()

            def __getattr__(self, name):
                return getattr(sock, name)

        self.sock = Counted()


# Ethernet (14) + IPv4 (20) + TCP with timestamps (32) headers: what each segment adds on a link.
SEGMENT_HEADERS = 66


def tcp_counters(sock: socket.socket) -> tuple[int, int, int, int]:
    """(bytes acked, bytes received, segments out, segments in) of a TCP socket (Linux TCP_INFO;
    offsets of struct tcp_info in linux/tcp.h)."""
    import struct

    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    acked, received = struct.unpack_from("<QQ", info, 120)
    segs_out, segs_in = struct.unpack_from("<II", info, 136)
    return acked, received, segs_out, segs_in


def child(mode: str, series: str | None, requests: int) -> dict:
    """Runs in its own process (ingress environment set by the parent): one Ray session;
    returns the figures. Also runs against an older checkout of twostep (`--tree`), whose
    device path went through the Router."""
    from twostep.ray_env import apply_ray_env

    apply_ray_env()
    import logging

    import ray
    from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
    from ray import serve

    from pipeline.series import SeriesStore
    from serve.runner import VariantRunner
    try:
        from serve.device.client import DeviceClient
        from serve.process.startup import start_http
    except ImportError:  # a checkout from before serve/ had rooms (--tree)
        from serve.client import DeviceClient
        from serve.startup import start_http
    from serve.settings import AppArgs

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    port = _free_port()
    start_http("127.0.0.1", port)
    noop_api = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=16)
    @serve.ingress(noop_api)
    class Noop:
        @noop_api.post("/")
        async def answer(self, request: Request) -> bytes:
            await request.body()
            return b""

        @noop_api.websocket("/ws")
        async def echo(self, websocket: WebSocket) -> None:
            """The no-op session: a 5-byte answer to every binary message (twostep's answer size)."""
            await websocket.accept()
            try:
                while True:
                    message = await websocket.receive_bytes()
                    await websocket.send_bytes(message[:5])
            except WebSocketDisconnect:
                pass

    serve.run(Noop.bind(), name="noop", route_prefix="/noop", logging_config={"enable_access_log": False})
    if series is None:
        from synthetic_series import make_tiny_series

        series = str(make_tiny_series(Path(tempfile.mkdtemp()) / "series").directory)
    store = SeriesStore.open(series)
    typed = not isinstance(store.manifest, dict)  # a checkout from before the typed manifest: a dict
    variant = store.manifest.base if typed else store.manifest["base"]
    offered = list(store.get(variant).splits if typed else store.get(variant)["splits"])
    split = "pool3" if "pool3" in offered else offered[1]
    # frames and probes go back to back here, over a device's 1000/s default: the limit is not measured
    app_args = AppArgs(series_dir=series, ms_per_mmac=20.0, placement="local", tail_replicas=1,
                       **({"stream_max_fps": 1e5} if "stream_max_fps" in AppArgs.model_fields else {}))
    try:
        from serve.app import deploy
    except ImportError:  # before the tail had an app of its own
        from serve.app import build_app

        serve.run(build_app(app_args), name="twostep", route_prefix="/",
                  logging_config={"enable_access_log": False})
    else:
        deploy(app_args)
    runner = VariantRunner.load(store, variant)
    spec = runner.input_shape
    pixels = np.random.default_rng(0).integers(0, 256, (1, *spec), dtype=np.uint8)
    frame = runner.run_head(pixels, split).frame

    noop = CountingConnection("127.0.0.1", port, timeout=120)
    device = DeviceClient(f"http://127.0.0.1:{port}", link="bench")
    device._conn = tail_conn = CountingConnection("127.0.0.1", port, timeout=120)

    def noop_once() -> float:
        start = time.perf_counter_ns()
        noop.request("POST", "/noop/", body=NOOP_BODY, headers={"Content-Type": "application/octet-stream"})
        response = noop.getresponse()
        response.read()
        assert response.status == 200, response.status
        return (time.perf_counter_ns() - start) / 1e6

    def send(frame, variant, split):
        if hasattr(device, "send_frame"):
            return device.send_frame(frame, variant, split)
        return device._json("POST", "/v1/tail", body=frame, content_type="application/octet-stream",
                            params={"variant": variant, "split": split, "link": device.link,
                                    "uplink_bps": device.uplink_bps})

    def tail_once() -> tuple[float, float]:
        start = time.perf_counter_ns()
        answer = send(frame, variant, split)
        wall = (time.perf_counter_ns() - start) / 1e6
        return wall, answer["timings_ms"]["decode"] + answer["timings_ms"]["tail"]

    sessions = _session_clients(port, variant, split)  # None: a checkout without sessions
    features = runner.calls(split)[0](pixels) if sessions else None

    def ws_noop_once(size: int = 16) -> float:
        start = time.perf_counter_ns()
        sessions["noop"].send(b"x" * size)
        sessions["noop"].recv(timeout=60)
        return (time.perf_counter_ns() - start) / 1e6

    coded = sessions["device"].encode(variant, split, features) if sessions else None
    # the echo of a message as long as the session's frame: the floor for the same bytes
    frame_size = 10 + len(coded[3]) if sessions else 16

    def session_once() -> tuple[float, float]:
        # values coded once, as the HTTP path's frame: the request, not the encoder, is timed
        start = time.perf_counter_ns()
        device_session = sessions["device"]
        answer, _ = device_session.wait(device_session.send_coded(variant, split, coded))
        wall = (time.perf_counter_ns() - start) / 1e6
        # the edge's decode and tail time for this very frame (the session asked for timings;
        # a checkout whose answers carry none: its mean tail time per route, from its stats)
        work_us = getattr(answer, "work_us", None)
        if work_us is None:
            route_id = device_session.routes[(variant, split)].id
            return wall, device_session.tail_ms.get(route_id, 0.0)
        return wall, work_us / 1000.0

    for _ in range(30):  # warm-up: first loads, connection set-up
        noop_once()
        tail_once()
        if sessions:
            ws_noop_once()
            session_once()
            ws_noop_once(frame_size)
            session_once()
    noop.sent = noop.received = tail_conn.sent = tail_conn.received = 0
    tcp_before = tcp_counters(tail_conn.raw_sock)
    if sessions:
        session_sock = sessions["device"]._ws.socket
        session_before = tcp_counters(session_sock)
        up_before, down_before = sessions["device"].bytes_sent, sessions["device"].bytes_received
    floor, wall, work, ws_floor, ws_sized, session_wall, session_work = [], [], [], [], [], [], []
    for _ in range(requests):
        floor.append(noop_once())
        w, k = tail_once()
        wall.append(w)
        work.append(k)
        if sessions:
            # every request follows one to the other replica (a woken process costs alike):
            # echo, session frame, echo of the frame's size, session frame
            for echo, size in ((ws_floor, 16), (ws_sized, frame_size)):
                echo.append(ws_noop_once(size))
                w, k = session_once()
                session_wall.append(w)
                session_work.append(k)
    if sessions:  # bytes of the interleaved frames only
        session_after = tcp_counters(session_sock)
        up_after, down_after = sessions["device"].bytes_sent, sessions["device"].bytes_received
    # a device streams: blocks of STREAM_BLOCK messages in a row on each WebSocket, alternating
    # ... and a third block: the session's own probe (a control message its handler answers at
    # once, no model): the no-op answer of the same replica on the same connection
    # ... and a fourth: the same frame from a bare WebSocket client (its own session, the frame
    # packed once, no DeviceSession): the edge's part of the session's fixed time alone
    streamed_echo, streamed_fixed, streamed_probe, streamed_bare = [], [], [], []
    probe_once = getattr(sessions["device"], "probe", None) if sessions else None
    bare_once = _bare_session(port, variant, split, coded) if sessions else None
    for _ in range(requests // STREAM_BLOCK if sessions else 0):
        streamed_echo += [ws_noop_once(frame_size) for _ in range(STREAM_BLOCK)]
        streamed_fixed += [w - k for w, k in (session_once() for _ in range(STREAM_BLOCK))]
        if probe_once is not None:
            streamed_probe += [_timed(lambda: probe_once(frame_size)) for _ in range(STREAM_BLOCK)]
        if bare_once is not None:
            streamed_bare += [bare_once() for _ in range(STREAM_BLOCK)]
    fixed = [w - k for w, k in zip(wall, work, strict=True)]
    acked, received, segs_out, segs_in = (b - a for a, b in zip(tcp_before, tcp_counters(tail_conn.raw_sock),
                                                              strict=True))
    stream = {}
    if sessions:
        device_session = sessions["device"]
        s_acked, s_received, s_out, s_in = (b - a for a, b in zip(
            session_before, session_after, strict=True))
        frames = len(session_wall)
        message_up = (up_after - up_before) / frames
        message_down = (down_after - down_before) / frames
        session_fixed = [w - k for w, k in zip(session_wall, session_work, strict=True)]
        stream = {
            "ws_floor_p50_ms": float(np.median(ws_floor)),
            "ws_floor_p95_ms": float(np.percentile(ws_floor, 95)),
            "ws_sized_bytes": frame_size,
            "streamed_echo_p50_ms": float(np.median(streamed_echo)) if streamed_echo else None,
            "streamed_fixed_p50_ms": float(np.median(streamed_fixed)) if streamed_fixed else None,
            "streamed_probe_p50_ms": float(np.median(streamed_probe)) if streamed_probe else None,
            "streamed_bare_p50_ms": float(np.median(streamed_bare)) if streamed_bare else None,
            "ws_sized_p50_ms": float(np.median(ws_sized)),
            "session_wall_p50_ms": float(np.median(session_wall)),
            "session_tail_ms": float(np.median(session_work)),
            "session_server_ms": device_session.server_ms,
            "session_fixed_p50_ms": float(np.median(session_fixed)),
            "session_fixed_p95_ms": float(np.percentile(session_fixed, 95)),
            "session_message_bytes": message_up, "session_answer_bytes": message_down,
            # WebSocket headers: 6 bytes a client message (<= 125 B payload; 8 up to 64 KiB), 2 a
            # server message
            "session_app_up_bytes": message_up + (6 if message_up <= 125 else 8),
            "session_app_down_bytes": message_down + 2,
            "session_link_up_bytes": (s_acked + s_out * SEGMENT_HEADERS) / frames,
            "session_link_down_bytes": (s_received + s_in * SEGMENT_HEADERS) / frames,
        }
        device_session.close()
        sessions["noop"].close()
        if bare_once is not None:
            bare_once.close()
    listening = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
    binds = sorted({line.split()[3] for line in listening.splitlines()[1:]
                    if "haproxy" in line or "ray::" in line or "python" in line})
    serve.shutdown()
    ray.shutdown()
    request_head = tail_conn.sent / requests - len(frame)
    return {
        "mode": mode, "requests": requests, "frame_bytes": len(frame),
        "floor_p50_ms": float(np.median(floor)), "floor_p95_ms": float(np.percentile(floor, 95)),
        "tail_wall_p50_ms": float(np.median(wall)), "tail_work_p50_ms": float(np.median(work)),
        "tail_fixed_p50_ms": float(np.median(fixed)), "tail_fixed_p95_ms": float(np.percentile(fixed, 95)),
        "request_head_bytes": request_head, "response_bytes": tail_conn.received / requests,
        "noop_request_bytes": noop.sent / requests, "noop_response_bytes": noop.received / requests,
        "listening": binds,
        # on an Ethernet link, per request: what the device sends (its data and ACK segments)
        # and receives, every segment with its headers
        "link_up_bytes": (acked + segs_out * SEGMENT_HEADERS) / requests,
        "link_down_bytes": (received + segs_in * SEGMENT_HEADERS) / requests,
        "segments_out": segs_out / requests, "segments_in": segs_in / requests,
        **stream,
    }


def _timed(call) -> float:
    start = time.perf_counter_ns()
    call()
    return (time.perf_counter_ns() - start) / 1e6


def _bare_session(port: int, variant: str, split: str, coded):
    """A session opened by a bare `websockets` client: a function that sends one frame (packed
    once) and returns its fixed time (wall less the edge's decode and tail time in the answer),
    or None where the checkout's answers carry no timings."""
    from websockets.sync.client import connect

    try:
        from pipeline.session_wire import TIMED_ANSWER, Hello, RouteDecl, pack_session_frame
    except ImportError:  # a checkout from before this bench timed a bare client
        return None
    bare = connect(f"ws://127.0.0.1:{port}/v1/tail/stream", compression=None, legacy=True)
    bare.send(Hello("bare", (RouteDecl(variant, split),), timings=True).to_json())
    if json.loads(bare.recv(timeout=60)).get("type") != "accept":
        bare.close()
        return None
    message = pack_session_frame(0, 1, *coded)

    def once() -> float:
        start = time.perf_counter_ns()
        bare.send(message)
        answer = bare.recv(timeout=60)
        while not isinstance(answer, bytes):  # the edge's stats (text), every 2 s
            answer = bare.recv(timeout=60)
        wall = (time.perf_counter_ns() - start) / 1e6
        if len(answer) != TIMED_ANSWER.size:  # an error answer (429, 5xx): not a timing
            raise RuntimeError(f"the bare session's frame was answered {answer!r}")
        return wall - TIMED_ANSWER.unpack(answer)[3] / 1000.0

    once.close = bare.close
    return once


def _session_clients(port: int, variant: str, split: str) -> dict | None:
    """A device session on twostep's tail and a WebSocket to the no-op echo, or None where the
    checkout measured has no sessions (`--tree` of an older commit)."""
    try:
        from websockets.sync.client import connect
    except ImportError:
        return None
    try:
        from serve.device.stream_client import DeviceSession
    except ImportError:
        try:  # a checkout from before serve/ had rooms (--tree)
            from serve.stream_client import DeviceSession
        except ImportError:  # ... or before sessions
            return None
    noop = connect(f"ws://127.0.0.1:{port}/noop/ws", compression=None, legacy=True)
    try:
        device = DeviceSession(f"http://127.0.0.1:{port}", link="bench", timings=True)
    except TypeError:  # a checkout whose sessions have no per-frame timings
        device = DeviceSession(f"http://127.0.0.1:{port}", link="bench")
    return {"noop": noop, "device": device}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", help="series directory (default: a tiny one built here)")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--modes", default="proxy,haproxy")
    parser.add_argument("--tree", help="measure the twostep checkout at this path instead "
                        "(e.g. a git worktree of an older commit)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.series, args.requests)))
        return 0
    from serve.process.ingress import choose_ingress

    results = []
    for mode in args.modes.split(","):
        chosen, env, line = choose_ingress(mode)
        tree = Path(args.tree).resolve() if args.tree else Path(__file__).resolve().parents[1]
        argv = [sys.executable, __file__, "--child", chosen, "--requests", str(args.requests)]
        if args.series:
            argv += ["--series", args.series]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=tree,
                              env={**os.environ, **env, "PYTHONPATH": str(tree)})
        if done.returncode != 0:
            print(f"{mode}: failed\n{done.stderr[-3000:]}")
            return 1
        results.append({**json.loads(done.stdout.strip().splitlines()[-1]), "line": line})
    print(f"{'ingress':8} {'floor p50':>10} {'device path p50':>16} {'tail work':>10} "
          f"{'fixed p50':>10} {'fixed/floor':>12}")
    for r in results:
        print(f"{r['mode']:8} {r['floor_p50_ms']:9.2f}ms {r['tail_wall_p50_ms']:15.2f}ms "
              f"{r['tail_work_p50_ms']:9.2f}ms {r['tail_fixed_p50_ms']:9.2f}ms "
              f"{r['tail_fixed_p50_ms'] / r['floor_p50_ms']:11.2f}x")
    for r in results:
        if "session_wall_p50_ms" not in r:
            continue
        fixed = r["session_fixed_p50_ms"]
        print(f"{r['mode']:8} session: WebSocket no-op echo p50 {r['ws_floor_p50_ms']:.2f} ms; frame over "
              f"a session {r['session_wall_p50_ms']:.2f} ms, less the edge's decode and tail "
              f"{r['session_tail_ms']:.2f} ms = fixed {fixed:.2f} ms (p95 {r['session_fixed_p95_ms']:.2f}, "
              f"echo p95 {r['ws_floor_p95_ms']:.2f}): {fixed / r['ws_floor_p50_ms']:.2f}x "
              f"the echo, {fixed / r.get('ws_sized_p50_ms', float('nan')):.2f}x the echo of a "
              f"{r.get('ws_sized_bytes', 0)}-byte message ({r.get('ws_sized_p50_ms', float('nan')):.2f} ms), "
              f"{fixed / r['tail_fixed_p50_ms']:.2f}x POST /v1/tail's fixed; the replica's own "
              f"time per frame (read to answered, tail included) {r['session_server_ms'] or 0:.2f} ms")
        if r.get("streamed_echo_p50_ms"):
            ratio = r["streamed_fixed_p50_ms"] / r["streamed_echo_p50_ms"]
            print(f"  streamed ({STREAM_BLOCK} messages in a row on each, blocks alternating): echo of "
                  f"{r['ws_sized_bytes']} B p50 {r['streamed_echo_p50_ms']:.2f} ms, session fixed p50 "
                  f"{r['streamed_fixed_p50_ms']:.2f} ms: {ratio:.2f}x")
        if r.get("streamed_bare_p50_ms"):
            print(f"  the same frame from a bare WebSocket client (no DeviceSession), streamed alike: "
                  f"fixed p50 {r['streamed_bare_p50_ms']:.2f} ms, "
                  f"{r['streamed_bare_p50_ms'] / r['streamed_echo_p50_ms']:.2f}x the echo: the edge's "
                  f"part; the device's DeviceSession adds "
                  f"{(r['streamed_fixed_p50_ms'] - r['streamed_bare_p50_ms']) * 1000:.0f} us")
        if r.get("streamed_probe_p50_ms"):
            print(f"  the session's own probe (answered by the tail replica's session handler, no "
                  f"model), streamed alike: p50 {r['streamed_probe_p50_ms']:.2f} ms; session fixed / "
                  f"probe {r['streamed_fixed_p50_ms'] / r['streamed_probe_p50_ms']:.2f}x")
        print(f"  bytes per frame: session message {r['session_message_bytes']:.0f} B ({r['frame_bytes']} B "
              f"wire frame over HTTP), with its WebSocket header {r['session_app_up_bytes']:.0f} B up and "
              f"{r['session_app_down_bytes']:.0f} B down; HTTP: "
              f"{r['request_head_bytes'] + r['frame_bytes']:.0f} B up, {r['response_bytes']:.0f} B down")
        print(f"  on an Ethernet link: session up {r['session_link_up_bytes']:.0f} B, down "
              f"{r['session_link_down_bytes']:.0f} B; HTTP up {r['link_up_bytes']:.0f} B, down "
              f"{r['link_down_bytes']:.0f} B")
    for r in results:
        print(f"{r['mode']}: {r['line']}")
        print(f"  HTTP bytes per device request: {r['request_head_bytes']:.0f} B request head + "
              f"{r['frame_bytes']} B frame; answer {r['response_bytes']:.0f} B "
              f"(no-op: {r['noop_request_bytes']:.0f} B / {r['noop_response_bytes']:.0f} B)")
        print(f"  on an Ethernet link per request: up {r['link_up_bytes']:.0f} B "
              f"({r['segments_out']:.1f} segments, {r['link_up_bytes'] - r['frame_bytes']:.0f} B besides "
              f"the frame), down {r['link_down_bytes']:.0f} B ({r['segments_in']:.1f} segments)")
        print(f"  listening: {', '.join(r['listening'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
