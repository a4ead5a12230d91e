"""The device's side of `twostep bench --trace`: classify test images at a frame rate while the
shaped link follows a trace, planning as a real device does.

The device is a `serve.device.client.DeviceClient` over one session: it plans from its own uplink
estimate (its frames' times, probes while it runs everything itself) and the edge's plan table,
fetched once for its constraint and its measured head times; a frame not answered within its
deadline (`deadline_factor` x the fallback's time on this device) is given up and the device runs
the fallback. It knows nothing of the trace: the trace serves only the link's emulation here,
the filler datagram that takes what the token bucket holds before a message (as the grid does,
so that a message pays its bytes at the link's rate).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import numpy as np

from pipeline.traces import Trace
from serve.device.client import DeviceClient, HeadCall
from twostep.bench.emulation import TCP_SEGMENT_OVERHEAD, UDP_OVERHEAD, device_time

MIN_FILLER_BYTES = 22  # fewer tokens than a minimal frame's worth (64 B) are left in the bucket


class SlowDevice(DeviceClient):
    """A DeviceClient whose heads and frame coding take `slowdown` x the CPU time they take here
    (sleeping the rest), as the bench's device emulation does for every strategy."""

    def __init__(self, *args, slowdown: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.slowdown = slowdown

    def _slowed(self, work: Callable):
        def slowed(*args):
            start, cpu_start = time.perf_counter_ns(), time.thread_time_ns()
            out = work(*args)
            wall = (time.perf_counter_ns() - start) / 1e6
            total = device_time(wall, (time.thread_time_ns() - cpu_start) / 1e6, self.slowdown)
            if total > wall:
                time.sleep((total - wall) / 1000.0)
            return out
        return slowed

    def fetch_head(self, variant_id: str, split: str, expected_sha256: str | None = None) -> HeadCall:
        return self._slowed(super().fetch_head(variant_id, split, expected_sha256))

    def session(self):
        """The session, whose coding of a frame's values is the device's work too."""
        fresh = self._session is None
        session = super().session()
        if fresh and session is not None:
            session.encode = self._slowed(session.encode)
        return session


class BurstSpender:
    """Before a message: one filler datagram that takes what tbf's bucket holds (what the link
    delivered, at the trace's rates, since it last carried something, at most one burst), so
    that the message is not let through at line rate."""

    def __init__(self, trace: Trace, start_at: float, burst_bytes: int, target: tuple[str, int]):
        self.trace, self.start_at, self.target = trace, start_at, target
        self.burst_bytes = burst_bytes
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.free_at = 0.0  # when the link is done with what went before (s from the start)
        self.sent = 0

    def __call__(self, nbytes: int) -> None:
        now = max(time.time() - self.start_at, 0.0)
        tokens = min(self.burst_bytes, self.trace.bits_between(self.free_at, now) / 8.0)
        if tokens >= UDP_OVERHEAD + MIN_FILLER_BYTES:
            self.udp.sendto(b"\0" * int(tokens - UDP_OVERHEAD), self.target)
            self.sent += 1
        # the message (and its headers) occupy the link from now, or after what is queued
        self.free_at = self.trace.arrival(max(now, self.free_at), nbytes + TCP_SEGMENT_OVERHEAD)


def replay_trace(setup, images: np.ndarray, labels: np.ndarray, job: dict,
                 log: Callable[[str], None] = lambda _: None) -> dict:
    """One replay (see the module docstring); `job` as `twostep.bench.trace_run` sends it.
    Returns one row per request (time from the start, the choice, bytes, deadline, wall time,
    the device's estimate, correctness) and the client's counters."""
    trace = Trace(job["name"], np.array(job["starts_s"]), np.array(job["rates_bps"]), job["duration_s"])
    floor, fps, start_at = float(job["accuracy_floor"]), float(job["fps"]), float(job["start_at"])
    client = SlowDevice(setup.url, link=f"trace-{job['slowdown']:g}x", timeout_s=120.0,
                        runtime=setup.runtime, threads=1, transport="stream",
                        deadline_factor=float(job["deadline_factor"]),
                        device_slowdown=float(job["device_slowdown"]),
                        device_overhead_ms=float(job["device_overhead_ms"]),
                        slowdown=float(job["slowdown"]))
    client.rtt_ms = float(job["rtt_ms"])  # the serving path's fixed time, as the grid plans with
    client.device_ms = {(v, s): float(ms) for v, s, ms in job["device_ms"]}
    table = client.plan_table(floor)
    for row in table["rows"]:  # every head the plan may pick, fetched while the link is fast
        if row["variant"]:  # and run once: a model's first call is slower than the next ones
            client.fetch_head(row["variant"], row["split"])(images[0][None])
    frames = [(r["variant"], r["split"]) for r in table["rows"] if r["variant"] and r["split"] != "output"]
    if frames:  # the session opens and declares every route now, not during a stall
        client.classify(images[0][None], *frames[-1])
        for variant, split in frames:
            client.session().route(variant, split)
    spender = None
    if setup.prime_host:
        spender = BurstSpender(trace, start_at, setup.burst_bytes, (setup.prime_host, setup.prime_port))
        client.session().before_send = spender
    wait = start_at - time.time()
    if wait > 0:
        time.sleep(wait)
    fallback = client.fallback(floor)  # fixed for the run: one plan table, the same head times
    deadline_ms = client.deadline_ms(fallback)
    rows, late = [], 0
    for i in range(int(trace.duration_s * fps)):
        due = start_at + i / fps
        if due > time.time():
            time.sleep(due - time.time())
        elif time.time() - due > 1.0 / fps:
            late += 1
        t = time.time() - start_at
        index = i % len(images)
        result = client.classify(images[index][None], accuracy_floor=floor)
        planned = result.given_up_from
        rows.append({"t": t, "variant": result.variant, "split": result.split,
                     "bytes": result.bytes_sent, "past_deadline": planned is not None,
                     "planned": {"variant": planned[0], "split": planned[1]} if planned else None,
                     "deadline_ms": deadline_ms,
                     "estimate_bps": client.uplink_bps or client.initial_bps,
                     "wall_ms": result.timings_ms["total"], "transport": result.transport,
                     "correct": result.prediction == int(labels[index])})
    session = client.session()
    counters = {"probes": client.probes, "probe_failures": client.probe_failures,
                "deadline_hits": client.deadline_hits, "late_sends": late,
                "reconnects": session.reconnects if session else 0,
                "fillers": spender.sent if spender else 0,
                "fallback": fallback, "deadline_ms": deadline_ms,
                "table_rows": len(table["rows"])}
    client.close()
    return {"rows": rows, "counters": counters}
