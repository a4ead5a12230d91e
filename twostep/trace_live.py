"""A trace replayed live through a running twostep server, and its choices priced on the trace.

`replay` puts the trace on the server's emulated link (`PUT /v1/link {"trace": ...}`, so the
server must run with link emulation on) and sends real images to `POST /v1/classify` at a frame
rate for the trace's length; `price` gives each answer the latency its choice has on the true
trace in the cost model (an empty link, as the oracle of `serve.trace_replay`), so the live
router, the model's replay, the oracle and the fixed strategies compare on one scale. Used by
the demo (`[demo] trace`) and `bench/bench_trace_live.py`.
"""

from __future__ import annotations

import io
import json
import time
import urllib.request
from collections.abc import Callable, Sequence

import numpy as np

from pipeline.selection import Candidate
from pipeline.traces import Trace
from serve.trace_replay import OVERHEAD_BYTES, Outcome, given_up_ms, latency_on_trace

TCP_OVERHEAD_BYTES = OVERHEAD_BYTES  # one segment's headers, as the model charges


def segment(trace: Trace, start_s: float, seconds: float) -> Trace:
    """The part of `trace` from `start_s`, `seconds` long, starting at 0."""
    if not (0 <= start_s and seconds > 0 and start_s + seconds <= trace.duration_s):
        raise ValueError(f"a segment from {start_s:g} s for {seconds:g} s is not within the "
                         f"{trace.duration_s:g} s of {trace.name}")
    keep = (trace.starts_s > start_s) & (trace.starts_s < start_s + seconds)
    index = int(np.searchsorted(trace.starts_s, start_s, side="right") - 1)
    starts = np.r_[0.0, trace.starts_s[keep] - start_s]
    rates = np.r_[trace.rates_bps[index], trace.rates_bps[keep]]
    return Trace(f"{trace.name}[{start_s:g}s+{seconds:g}s]", starts, rates, seconds, trace.min_bps)


def trace_text(trace: Trace) -> str:
    """The trace as `time_s Mbit/s` lines (what `PUT /v1/link` takes)."""
    return "".join(f"{s:.3f} {r / 1e6:.6f}\n" for s, r in trace.steps())


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    pixels = np.asarray(pixels, dtype=np.uint8)  # (C, S, S)
    image = pixels[0] if pixels.shape[0] == 1 else np.transpose(pixels, (1, 2, 0))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _call(url: str, method: str, body: bytes, content_type: str, timeout: float = 120.0) -> dict:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def warm_up(url: str, candidates: Sequence[Candidate], floor: float | None, image: np.ndarray) -> None:
    """Load every variant that may be chosen (its head and its tail) before the clock starts:
    one on-device call and one frame at its smallest split each."""
    for variant in sorted({c.variant_id for c in candidates if floor is None or c.accuracy >= floor}):
        frames = [c for c in candidates
                  if c.variant_id == variant and c.bytes_sent > 0 and c.split != "input"]
        splits = ["output"] + ([min(frames, key=lambda c: c.bytes_sent).split] if frames else [])
        for split in splits:
            _call(f"{url}/v1/classify?link=warm-up&variant={variant}&split={split}", "POST",
                  _png(image), "image/png")


def replay(url: str, trace: Trace, images: np.ndarray, fps: float = 5.0, rtt_ms: float = 20.0,
           link: str = "trace", on_request: Callable[[int], None] | None = None) -> list[dict]:
    """Replay `trace` on the server at `url` while images (N, C, S, S uint8) go to
    `/v1/classify` at `fps`; one row per answer: send time (s from the replay's start), choice,
    bytes, whether it missed its deadline, the router's estimate and its own total time."""
    body = json.dumps({"trace": trace_text(trace), "rtt_ms": rtt_ms}).encode()
    _call(f"{url}/v1/link", "PUT", body, "application/json")
    started = time.monotonic()
    rows = []
    for i in range(int(trace.duration_s * fps)):
        wait = started + i / fps - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        sent = time.monotonic() - started
        answer = _call(f"{url}/v1/classify?link={link}", "POST", _png(images[i % len(images)]), "image/png")
        rows.append({"t": sent, "variant": answer["variant"], "split": answer["split"],
                     "bytes": answer["bytes_sent"], "past_deadline": answer["past_deadline"],
                     "deadline_ms": answer["deadline_ms"], "planned": answer["given_up_from"],
                     "estimate_bps": answer["bandwidth_bps"], "wall_ms": answer["timings_ms"]["total"]})
        if on_request is not None:
            on_request(i)
    return rows


def price(rows: list[dict], trace: Trace, candidates: Sequence[Candidate], rtt_ms: float = 20.0,
          overhead_bytes: float = TCP_OVERHEAD_BYTES) -> Outcome:
    """The live answers as an `Outcome`: each choice's latency on the true trace (an empty link),
    each transfer `overhead_bytes` more than its payload."""
    by_key = {(c.variant_id, c.split): c for c in candidates}
    priced, chosen, planned = [], [], []
    for row in rows:
        candidate = by_key[(row["variant"], row["split"])]
        chosen.append(candidate)
        given_up = row.get("planned") if row["past_deadline"] else None
        planned.append((given_up["variant"], given_up["split"]) if given_up
                       else (row["variant"], row["split"]))
        if given_up:
            priced.append(given_up_ms(by_key[planned[-1]], row["deadline_ms"], candidate))
        else:
            priced.append(float(latency_on_trace(trace, np.array([row["t"]]), candidate, rtt_ms,
                                                 overhead_bytes)[0]))
    switches = sum(a != b for a, b in zip(planned, planned[1:], strict=False))  # the router's choices
    return Outcome(np.array([r["t"] for r in rows]), np.array(priced),
                   [f"{c.variant_id}@{c.split}" for c in chosen], np.array([c.accuracy for c in chosen]),
                   np.array([r["bytes"] > 0 and not r["past_deadline"] for r in rows]),
                   deadline_hits=sum(r["past_deadline"] for r in rows), switches=switches,
                   estimates_bps=np.array([r["estimate_bps"] for r in rows]))
