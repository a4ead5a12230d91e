"""The Serve application on a real local Serve instance (one shared Ray session, one app for the
module, a tiny series built here): end-to-end predictions, the bandwidth-aware switch without
flapping, malformed input of every kind, the device client, and a tail replica killed mid-burst.

Quantisation tolerance: frames carry 8-bit per-tensor affine codes, so a split tensor is off by
at most half a quantisation step per element. The served logits must equal, within float
rounding (1e-4), the same head -> encode -> decode -> tail computed in-process, and be within 5%
of the logit range of the unsplit float model, whose prediction they must match wherever that
model's top-1 margin exceeds twice the logit error.
"""

import concurrent.futures
import json
import time
from dataclasses import dataclass

import numpy as np
import pytest
import requests
import torch
from httputil import PausableProxy, free_port, png

from pipeline.data import DataInfo, normalize

pytestmark = pytest.mark.integration

APP = "twostep"
TAIL_APP = "twostep-tail"
SPLITS = ("input", "conv1_1", "pool1", "conv3_2", "pool3", "pool5", "output")


@dataclass
class Served:
    url: str
    store: object
    images: np.ndarray  # (N, 1, 32, 32) uint8 test images
    args: object = None  # the AppArgs deployed


@pytest.fixture(scope="module")
def served(ray_session, tmp_path_factory):
    from ray import serve
    from synthetic_series import make_tiny_series, synthetic_images

    from serve.app import deploy
    from serve.process.startup import start_http
    from serve.settings import AppArgs

    store = make_tiny_series(tmp_path_factory.mktemp("served") / "series")
    port = free_port()
    serve.shutdown()  # a Serve instance left by another module would ignore our HTTP options
    start_http("127.0.0.1", port)
    args = AppArgs(
        series_dir=str(store.directory), ms_per_mmac=20.0, placement="local", emulate_link=True,
        max_image_pixels=65536, max_body_bytes=65536, call_timeout_s=60.0, probe_interval_s=0.5,
        tail_upscale_delay_s=30.0,  # one tail replica, so the kill test kills the only one
    )
    deploy(args)
    images = synthetic_images(12, seed=99).images.numpy()
    yield Served(f"http://127.0.0.1:{port}", store, images, args)
    serve.shutdown()


@pytest.fixture
def http():
    with requests.Session() as session:
        yield session


def classify(http, served, pixels, **params) -> dict:
    response = http.post(f"{served.url}/v1/classify", params=params, data=png(pixels),
                         headers={"Content-Type": "image/png"}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def set_link(http, served, bandwidth_bps, rtt_ms=0.0) -> None:
    response = http.put(f"{served.url}/v1/link", json={"bandwidth_bps": bandwidth_bps, "rtt_ms": rtt_ms})
    assert response.status_code == 200, response.text


def in_process(served, variant: str, split: str, pixels: np.ndarray,
               head_runtime: str = "onnxruntime") -> tuple[np.ndarray, np.ndarray]:
    """(logits through head (run by `head_runtime`), wire frame and tail as served (ONNX
    Runtime, the default); logits of the unsplit float model)."""
    from serve.runner import VariantRunner

    runner = VariantRunner.load(served.store, variant)
    head = VariantRunner.load(served.store, variant, runtime=head_runtime).run_head(pixels, split)
    quantised = head.logits if head.frame is None else runner.run_tail(head.frame, split).logits
    info = DataInfo.from_dict(served.store.manifest.data)
    with torch.inference_mode():
        exact = runner.model(normalize(torch.from_numpy(pixels), info)).numpy()
    return quantised, exact


def test_health_and_variants(http, served):
    health = http.get(f"{served.url}/v1/health").json()
    assert health["status"] == "ok" and health["variants"] == len(served.store.variants)
    listed = http.get(f"{served.url}/v1/variants").json()
    assert {v["id"] for v in listed["variants"]} == set(served.store.ids())
    assert listed["data"]["input_size"] == 32


@pytest.mark.parametrize("variant", ["vgg11-base", "vgg11-s2-conv3_2-i1"])
def test_end_to_end_prediction_equals_the_in_process_model(http, served, variant):
    listed = {v["id"]: v for v in http.get(f"{served.url}/v1/variants").json()["variants"]}
    splits = [s for s in SPLITS if s in listed[variant]["splits"]]
    assert "input" in splits and "output" in splits and len(splits) >= 3
    for split in splits:
        for pixels in served.images[:4]:
            pixels = pixels[None]
            answer = classify(http, served, pixels, variant=variant, split=split)
            assert (answer["variant"], answer["split"], answer["forced"]) == (variant, split, True)
            quantised, exact = in_process(served, variant, split, pixels)
            served_logits = np.array(answer["logits"], np.float32)
            np.testing.assert_allclose(served_logits, quantised[0], atol=1e-4, rtol=1e-4)
            error = np.abs(served_logits - exact[0]).max()
            assert error <= 0.05 * (exact.max() - exact.min()), (split, error)
            top2 = np.sort(exact[0])[-2:]
            if top2[1] - top2[0] > 2 * error:
                assert answer["prediction"] == int(exact[0].argmax()), split
            assert (answer["bytes_sent"] == 0) == (split == "output")
            timings = answer["timings_ms"]
            assert timings["total"] >= timings["head"] + timings["tail"]
            assert answer["label"] == served.store.manifest.data["classes"][answer["prediction"]]


def _phase(http, served, link, count) -> list[tuple[str, str, int]]:
    """(variant, split, bytes sent) of `count` planned requests over `link`."""
    answers = [classify(http, served, served.images[i % 12][None], link=link) for i in range(count)]
    return [(a["variant"], a["split"], a["bytes_sent"]) for a in answers]


def _changes(phase) -> int:
    return sum(a[:2] != b[:2] for a, b in zip(phase, phase[1:], strict=False))


def test_router_switches_to_fewer_bytes_when_bandwidth_drops_and_back(http, served):
    link = "switch-test"
    try:
        set_link(http, served, 10e6)
        fast = _phase(http, served, link, 4)
        set_link(http, served, 100e3)
        slow = _phase(http, served, link, 8)
        set_link(http, served, 10e6)
        back = _phase(http, served, link, 14)
    finally:
        set_link(http, served, None)
    assert _changes(fast) == 0
    assert slow[-1][2] < min(b for _, _, b in fast)  # fewer bytes than any fast-link frame
    assert back[-1][:2] == fast[-1][:2]
    assert _changes(slow) <= 1 and _changes(back) <= 1, (slow, back)  # no flapping
    estimate = http.get(f"{served.url}/v1/link", params={"link": link}).json()["estimate"]
    assert estimate["samples_seen"] > 0


def test_a_replayed_trace_with_a_tunnel_gives_frames_up_and_offloads_again_after_it(http, served):
    """The emulated link replays 2 s at 10 Mbit/s, a 4-second tunnel and 10 Mbit/s again: the
    frame caught in the tunnel is given up at its deadline and finished on the device, requests
    stay on the device in the tunnel, and frames go to the edge again within 3 s of its end."""
    link = "tunnel-test"
    for variant in served.store.ids():  # every model loaded before the clock starts
        classify(http, served, served.images[0][None], variant=variant, split="output")
    response = http.put(f"{served.url}/v1/link", json={"trace": "0 10\n2 0\n6 10\n600 10\n"})
    assert response.status_code == 200, response.text
    replay_start = time.monotonic()
    answers = []
    try:
        assert response.json()["emulation"]["trace"]["name"] == "PUT /v1/link"
        while time.monotonic() - replay_start < 12.0:
            answer = classify(http, served, served.images[len(answers) % 12][None], link=link)
            answers.append((time.monotonic() - replay_start, answer))
            if answer["bytes_sent"] and not answer["past_deadline"] and answers[-1][0] > 6.0:
                break
    finally:
        set_link(http, served, None)
    assert answers[0][1]["bytes_sent"] > 0  # a fast link: the frame goes to the edge
    given_up = [a for _, a in answers if a["past_deadline"]]
    assert given_up and all(a["split"] == "output" for a in given_up)
    late = given_up[0]
    assert late["timings_ms"]["link"] == pytest.approx(late["deadline_ms"], abs=50.0)
    timeline = [(round(t, 2), a["split"], a["bytes_sent"], a["past_deadline"]) for t, a in answers]
    # a frame or two are given up (each teaches the estimate), then the device runs everything
    settled = [a for t, a in answers if 4.5 < t < 5.9]
    assert settled and all(a["bytes_sent"] == 0 for a in settled), timeline
    back = [t for t, a in answers if t > 6.0 and a["bytes_sent"] and not a["past_deadline"]]
    assert back and back[0] - 6.0 <= 3.0, timeline
    health = http.get(f"{served.url}/v1/health").json()
    assert health["deadline_hits"] >= 1


def test_plan_endpoint(http, served):
    fast = http.get(f"{served.url}/v1/plan", params={"bandwidth_bps": "1gbit", "top": 3}).json()
    slow = http.get(f"{served.url}/v1/plan", params={"bandwidth_bps": "10kbit"}).json()
    assert fast["bandwidth_source"] == "given" and len(fast["ranked"]) == 3
    assert slow["best"]["bytes"] < fast["best"]["bytes"]
    budget = http.get(f"{served.url}/v1/plan", params={"latency_budget_ms": 1000}).json()
    assert budget["best"]["total_ms"] <= 1000 and budget["bandwidth_source"] == "estimate"
    # A device that says it is 1000x slower than the edge gets a plan that runs nothing on it.
    slow_device = http.get(f"{served.url}/v1/plan", params={"bandwidth_bps": "1gbit",
                                                             "device_slowdown": "1000"}).json()
    assert slow_device["device_slowdown"] == 1000 and slow_device["best"]["device_ms"] == 0
    # A device that timed the plan's best head at 1000 s is planned something else; the time it
    # gave is the plan's device time where it plans that head anyway.
    params = {"bandwidth_bps": "1kbit", "frames_only": "true", "top": 100}
    plain = http.get(f"{served.url}/v1/plan", params=params).json()
    first = plain["best"]
    times = {first["variant"]: {first["split"]: 1e6}}
    timed = http.post(f"{served.url}/v1/plan", params=params, json={"device_ms": times}).json()
    assert timed["device_times"] == 1 and plain["device_times"] == 0
    assert (timed["best"]["variant"], timed["best"]["split"]) != (first["variant"], first["split"])
    same = [r for r in timed["ranked"] if (r["variant"], r["split"]) == (first["variant"], first["split"])]
    assert same and same[0]["device_ms"] == pytest.approx(1e6)
    table = http.post(f"{served.url}/v1/plan/table", params={"frames_only": "true"},
                      json={"device_ms": times}).json()
    assert table["device_times"] == 1 and table["rows"]


def _bad_png_bomb() -> bytes:
    import struct
    import zlib

    data = png(np.zeros((1, 1, 32, 32), np.uint8))
    chunk = b"IHDR" + struct.pack(">II", 30_000, 30_000) + data[24:29]
    return data[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


def test_every_malformed_input_gets_a_4xx_and_the_app_keeps_serving(http, served):
    from pipeline.codec import CodecConfig, encode_frame, variant_tag

    u = served.url
    good_png = png(served.images[0][None])
    png_type = {"Content-Type": "image/png"}
    raw_type = {"Content-Type": "application/octet-stream"}
    tag = variant_tag("vgg11-base")
    pool3 = np.zeros((1, 16, 4, 4), np.float32)
    good_frame = encode_frame(pool3, CodecConfig(), tag)
    cases = {
        "garbage image": ("POST", "/v1/classify", {}, b"\x89PNG garbage", png_type, 400),
        "truncated image": ("POST", "/v1/classify", {}, good_png[:50], png_type, 400),
        "decompression bomb": ("POST", "/v1/classify", {}, _bad_png_bomb(), png_type, 413),
        "too many pixels": ("POST", "/v1/classify", {}, png(np.zeros((1, 1, 300, 300), np.uint8)),
                            png_type, 413),
        "unsupported type": ("POST", "/v1/classify", {}, good_png, {"Content-Type": "text/plain"}, 415),
        "empty body": ("POST", "/v1/classify", {}, b"", png_type, 400),
        "oversize body": ("POST", "/v1/classify", {}, b"\0" * 70_000, png_type, 413),
        "raw without shape": ("POST", "/v1/classify", {}, bytes(1024), raw_type, 400),
        "raw wrong shape": ("POST", "/v1/classify", {"shape": "3,32,32"}, bytes(1024), raw_type, 400),
        "raw short": ("POST", "/v1/classify", {"shape": "1,32,32"}, bytes(1000), raw_type, 400),
        "unknown variant": ("POST", "/v1/classify", {"variant": "nope", "split": "pool3"}, good_png,
                            png_type, 404),
        "bad variant id": ("POST", "/v1/classify", {"variant": "../x", "split": "pool3"}, good_png,
                           png_type, 400),
        "unknown split": ("POST", "/v1/classify", {"variant": "vgg11-base", "split": "pool9"},
                          good_png, png_type, 400),
        "split not offered": ("POST", "/v1/classify", {"variant": "vgg11-s2-conv3_2-i1",
                              "split": "conv1_1"}, good_png, png_type, 400),
        "floor above 1": ("POST", "/v1/classify", {"accuracy_floor": "2"}, good_png, png_type, 400),
        "negative budget": ("POST", "/v1/classify", {"latency_budget_ms": "-5"}, good_png, png_type, 400),
        "both constraints": ("POST", "/v1/classify", {"accuracy_floor": "0.5",
                             "latency_budget_ms": "50"}, good_png, png_type, 400),
        "nan floor": ("POST", "/v1/classify", {"accuracy_floor": "nan"}, good_png, png_type, 400),
        "infeasible budget": ("POST", "/v1/classify", {"latency_budget_ms": "0.001"}, good_png,
                              png_type, 422),
        "unknown parameter": ("POST", "/v1/classify", {"accuracy_flor": "0.5"}, good_png, png_type, 400),
        "bad uplink": ("POST", "/v1/classify", {"uplink_bps": "-1"}, good_png, png_type, 400),
        "garbage frame": ("POST", "/v1/tail", {"variant": "vgg11-base", "split": "pool3"},
                          b"\x00" * 64, raw_type, 400),
        "truncated frame": ("POST", "/v1/tail", {"variant": "vgg11-base", "split": "pool3"},
                            good_frame[:-5], raw_type, 400),
        "corrupted frame": ("POST", "/v1/tail", {"variant": "vgg11-base", "split": "pool3"},
                            good_frame[:-1] + bytes([good_frame[-1] ^ 0xFF]), raw_type, 400),
        "frame of another variant": ("POST", "/v1/tail", {"variant": "vgg11-base", "split": "pool3"},
                                     encode_frame(pool3, CodecConfig(), variant_tag("vgg11-s1-i1")),
                                     raw_type, 400),
        "frame of another split": ("POST", "/v1/tail", {"variant": "vgg11-base", "split": "pool3"},
                                   encode_frame(np.zeros((1, 32, 1, 1), np.float32), CodecConfig(), tag),
                                   raw_type, 400),
        "frame batch too large": ("POST", "/v1/tail", {"variant": "vgg11-base", "split": "pool3"},
                                  encode_frame(np.zeros((65, 16, 4, 4), np.float32), CodecConfig(), tag),
                                  raw_type, 400),
        "frame for output": ("POST", "/v1/tail", {"variant": "vgg11-base", "split": "output"},
                             good_frame, raw_type, 400),
        "frame wrong type": ("POST", "/v1/tail", {"variant": "vgg11-base", "split": "pool3"},
                             good_frame, png_type, 415),
        "frame unknown variant": ("POST", "/v1/tail", {"variant": "nope", "split": "pool3"},
                                  good_frame, raw_type, 404),
        "frame without split": ("POST", "/v1/tail", {"variant": "vgg11-base"}, good_frame, raw_type, 400),
        "weights unknown variant": ("GET", "/v1/variants/nope/head", {"split": "pool1"}, None, {}, 404),
        "weights bad split": ("GET", "/v1/variants/vgg11-base/head", {"split": "x"}, None, {}, 400),
        "plan zero bandwidth": ("GET", "/v1/plan", {"bandwidth_bps": "0"}, None, {}, 400),
        "plan absurd rtt": ("GET", "/v1/plan", {"rtt_ms": "1e12"}, None, {}, 400),
        "plan bad top": ("GET", "/v1/plan", {"top": "0"}, None, {}, 400),
        "plan zero device slowdown": ("GET", "/v1/plan", {"device_slowdown": "0"}, None, {}, 400),
        "plan text device slowdown": ("GET", "/v1/plan", {"device_slowdown": "fast"}, None, {}, 400),
        "plan times not json": ("POST", "/v1/plan", {}, b"{bad", {}, 400),
        "plan times wrong key": ("POST", "/v1/plan", {}, b'{"times": {}}', {}, 400),
        "plan times unknown variant": ("POST", "/v1/plan", {},
                                       b'{"device_ms": {"nope": {"output": 1}}}', {}, 400),
        "plan times bad split": ("POST", "/v1/plan/table", {},
                                 b'{"device_ms": {"vgg11-base": {"x": 1}}}', {}, 400),
        "plan times negative": ("POST", "/v1/plan", {},
                                b'{"device_ms": {"vgg11-base": {"output": -1}}}', {}, 400),
        "plan times beyond a float": ("POST", "/v1/plan", {},
                                      b'{"device_ms": {"vgg11-base": {"output": 1' + b"0" * 400
                                      + b"}}}", {}, 400),
        "plan times huge integer": ("POST", "/v1/plan", {}, b"[" + b"9" * 5000 + b"]", {}, 400),
        "plan times deep nesting": ("POST", "/v1/plan", {}, b"[" * 100_000, {}, 400),
        "link not json": ("PUT", "/v1/link", {}, b"{bad", {"Content-Type": "application/json"}, 400),
        "link negative": ("PUT", "/v1/link", {}, b'{"bandwidth_bps": -1}', {}, 400),
        "link unknown key": ("PUT", "/v1/link", {}, b'{"speed": 1}', {}, 400),
        "trace not text": ("PUT", "/v1/link", {}, b'{"trace": 5}', {}, 400),
        "trace endless": ("PUT", "/v1/link", {}, b'{"trace": "0 1\\n1e308 1"}', {}, 400),
        "trace huge": ("PUT", "/v1/link", {}, b'{"trace": "100000000000000"}', {}, 400),
        "trace speed": ("PUT", "/v1/link", {}, b'{"trace": "0 1", "trace_speed": 1e-8}', {}, 400),
        "trace and rate": ("PUT", "/v1/link", {}, b'{"trace": "0 1", "bandwidth_bps": 1e6}', {}, 400),
    }
    for name, (method, path, params, body, headers, status) in cases.items():
        response = http.request(method, u + path, params=params, data=body, headers=headers, timeout=60)
        assert response.status_code == status, (name, response.status_code, response.text)
        assert response.json()["error"], name
    assert http.get(f"{u}/v1/health").json()["status"] == "ok"
    answer = classify(http, served, served.images[1][None], variant="vgg11-base", split="pool3")
    assert answer["bytes_sent"] > 0
    raw = http.post(f"{u}/v1/classify", params={"shape": "1,32,32", "variant": "vgg11-base",
                                                "split": "pool3"},
                    data=served.images[1].tobytes(), headers=raw_type, timeout=60).json()
    assert raw["logits"] == answer["logits"]


def test_device_client_round_trip(served):
    from serve.device.client import DeviceClient

    with DeviceClient(served.url, link="phone-1", throttle_bps=2e6, min_report_bytes=256,
                      runtime="torch", transport="http") as client:
        pixels = client.pixels(png(served.images[2][None]))
        np.testing.assert_array_equal(pixels, served.images[2][None])
        results = [client.classify(pixels, "vgg11-base", "conv1_1") for _ in range(3)]
        quantised, _ = in_process(served, "vgg11-base", "conv1_1", pixels, head_runtime="torch")
        for result in results:
            assert result.prediction == int(quantised[0].argmax())
            np.testing.assert_allclose(result.logits, quantised[0], atol=1e-4, rtol=1e-4)
            assert result.bytes_sent > 1000 and result.timings_ms["send"] > 0
        assert client.uplink_bps is not None and client.uplink_bps > 0
        planned = client.classify(pixels)  # the edge's plan for this device's link
        assert planned.variant in served.store.ids()
        on_device = client.classify(pixels, "vgg11-base", "output")
        assert on_device.bytes_sent == 0 and on_device.prediction == int(quantised[0].argmax())
        estimate = client._json("GET", "/v1/link", params={"link": "phone-1"})["estimate"]
        assert estimate["samples_seen"] >= 1  # the reported uplink reached the edge's estimator
        # the device times the heads the edge short-lists and is planned with its own times
        plan = client.plan_timed(accuracy_floor=0.0, bandwidth_bps=1e5, pixels=pixels,
                                 shortlist=3, calls=2)
        assert plan["device_times"] == len(client.device_ms) >= 1
        assert (plan["best"]["variant"], plan["best"]["split"]) in client.device_ms
        assert all(ms > 0 for ms in client.device_ms.values())
        assert client.plan_table(accuracy_floor=0.0)["device_times"] == len(client.device_ms)


def session_expected(served, variant: str, split: str, pixels: np.ndarray) -> tuple[np.ndarray, int]:
    """(logits, message bytes) of a session frame of (variant, split) on `pixels`, computed here:
    the ONNX head, the session's coding (bfloat16 parameters), the served tail."""
    from pipeline.session_codec import decode_values, encode_values
    from pipeline.session_wire import pack_session_frame, parse_session_frame
    from serve.runner import VariantRunner

    runner = VariantRunner.load(served.store, variant)
    route = runner.session_route(0, split)
    lz4, scale_bits, zero_bits, payload = encode_values(runner.calls(split)[0](pixels), route)
    message = pack_session_frame(0, 0, lz4, scale_bits, zero_bits, payload)
    tensor = decode_values(parse_session_frame(message, {0: route}))
    return runner.calls(split)[1](tensor)[0], len(message)


def test_device_client_over_a_session(served):
    """The default transport where the edge offers sessions: answers equal the session coding
    computed here, 10 bytes of header a frame, the uplink measured from its own frames and
    reported in-band, routes declared as the plan changes."""
    from serve.device.client import DeviceClient

    with DeviceClient(served.url, link="phone-s", throttle_bps=1e6, min_report_bytes=256,
                      logits=True) as client:
        pixels = served.images[3][None]
        for split in ("conv1_1", "pool3", "conv1_1"):
            result = client.classify(pixels, "vgg11-base", split)
            expected, message_bytes = session_expected(served, "vgg11-base", split, pixels)
            assert result.transport == "stream"
            assert result.prediction == int(expected.argmax())
            np.testing.assert_allclose(result.logits, expected, atol=1e-4, rtol=1e-4)
            assert result.bytes_sent == message_bytes
        session = client.session()
        assert session.reconnects == 1 and len(session.routes) == 2
        # pipelined: up to 3 frames in flight, answers in order
        stream = list(client.classify_stream((im[None] for im in served.images[:6]), "vgg11-base",
                                             "pool3", window=3))
        assert [r.prediction for r in stream] == [
            int(session_expected(served, "vgg11-base", "pool3", im[None])[0].argmax())
            for im in served.images[:6]]
        assert client.uplink_bps is not None and client.uplink_bps > 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            estimate = client._json("GET", "/v1/link", params={"link": "phone-s"})["estimate"]
            if estimate["samples_seen"] >= 1:
                break
            time.sleep(0.2)
        assert estimate["samples_seen"] >= 1  # the in-band uplink report reached the edge
        health = requests.get(f"{served.url}/v1/health", timeout=30).json()
        assert "stream" in json.dumps(health)
        # running everything on the device, it probes its uplink over the session
        time.sleep(client.probe_interval_s)
        probes = client.probes
        assert client.classify(pixels, "vgg11-base", "output").bytes_sent == 0
        assert client.probes == probes + 1 and client.estimator.age_s() < 1.0


def test_a_device_gives_a_frame_up_on_a_stalled_link_and_finishes_it_itself(served):
    """The device's own deadline: its uplink stalls (a proxy stops forwarding what it sends), the
    frame is given up after `frame_deadline_ms` and the fallback of the edge's plan table runs on
    the device; the link is known to be slow; when it flows again, frames are answered again."""
    from serve.device.client import DeviceClient

    proxy = PausableProxy(int(served.url.rsplit(":", 1)[1]))
    try:
        with DeviceClient(f"http://127.0.0.1:{proxy.port}", link="stalled", frame_deadline_ms=400.0,
                          transport="stream") as client:
            pixels = served.images[5][None]
            table = client.plan_table(0.0)
            fallback = client.fallback(0.0)
            assert fallback == (table["rows"][0]["variant"], "output")
            client.fetch_head(*fallback)  # its weights come while the link flows
            assert client.classify(pixels, "vgg11-base", "pool3", accuracy_floor=0.0).transport == "stream"
            proxy.pause()
            start = time.monotonic()
            late = client.classify(pixels, "vgg11-base", "pool3", accuracy_floor=0.0)
            waited = time.monotonic() - start
            assert late.given_up_from == ("vgg11-base", "pool3")
            assert (late.variant, late.split, late.bytes_sent) == (fallback[0], "output", 0)
            assert 0.4 <= waited < 3.0 and client.deadline_hits == 1
            expected, _ = in_process(served, fallback[0], "output", pixels)
            assert late.prediction == int(expected.argmax())
            # the frame's bytes did not arrive in 0.4 s: the estimate knows the link is slow
            assert client.uplink_bps < client.initial_bps / 10
            proxy.resume()
            again = client.classify(pixels, "vgg11-base", "pool3", accuracy_floor=0.0)
            assert again.transport == "stream" and again.given_up_from is None
            expected, _ = session_expected(served, "vgg11-base", "pool3", pixels)
            assert again.prediction == int(expected.argmax())
    finally:
        proxy.close()


# A device with numpy, lz4, onnxruntime and pillow: importing torch, Ray or any other
# dependency of the edge fails in it.
EDGE_ONLY = ("torch", "torchvision", "ray", "pydantic", "fastapi", "starlette", "safetensors",
             "matplotlib", "tqdm", "yaml", "requests")
NO_TORCH = (f"import sys; sys.modules.update(dict.fromkeys({EDGE_ONLY!r})); "
            "from twostep.cli import main; sys.exit(main(sys.argv[1:]))")


def test_a_device_without_torch_classifies_a_real_fashion_mnist_image(served, tmp_path):
    import json
    import subprocess
    import sys

    from pipeline.data import DEFAULT_FASHION_MNIST_DIR, read_idx
    from serve.runner import VariantRunner

    images = read_idx(f"{DEFAULT_FASHION_MNIST_DIR}/t10k-images-idx3-ubyte.gz")
    pixels = np.pad(images[7], 2)[None, None]  # 28x28 -> 32x32 as the series' data
    (tmp_path / "shirt.png").write_bytes(png(pixels))
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH, "device", "classify", str(tmp_path / "shirt.png"),
         "--url", served.url, "--variant", "vgg11-base", "--split", "pool3", "--runtime",
         "onnxruntime", "--json", "--logits"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # over a session (the default: websockets is a device dependency): coded as computed here
    expected, message_bytes = session_expected(served, "vgg11-base", "pool3", pixels)
    np.testing.assert_allclose(result["logits"], expected, atol=1e-4, rtol=1e-4)
    assert result["prediction"] == int(expected.argmax()) and result["bytes_sent"] == message_bytes
    assert result["transport"] == "stream" and result["timings_ms"]["head"] > 0
    over_http = subprocess.run(
        [sys.executable, "-c", NO_TORCH, "device", "classify", str(tmp_path / "shirt.png"),
         "--url", served.url, "--variant", "vgg11-base", "--split", "pool3", "--json",
         "--transport", "http"], capture_output=True, text=True, timeout=120)
    assert over_http.returncode == 0, over_http.stderr
    # the same graph in this process, then the served tail on its wire frame
    frame = VariantRunner.load(served.store, "vgg11-base", runtime="onnxruntime").run_head(
        pixels, "pool3").frame
    expected = VariantRunner.load(served.store, "vgg11-base").run_tail(frame, "pool3").logits[0]
    http_result = json.loads(over_http.stdout)
    np.testing.assert_allclose(http_result["logits"], expected, atol=1e-4, rtol=1e-4)
    assert http_result["bytes_sent"] == len(frame) and http_result["transport"] == "http"

    planned = subprocess.run(
        [sys.executable, "-c", NO_TORCH, "device", "plan", "--url", served.url, "--bandwidth",
         "100kbit", "--time-heads", "2", "--calls", "2", "--idle-ms", "1", "--runtime",
         "onnxruntime"], capture_output=True, text=True, timeout=120)
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    timed = [(v, s) for v, splits in plan["timed_heads_ms"].items() for s in splits]
    assert 1 <= len(timed) <= 2 and plan["device_times"] == len(timed)

    fetched = subprocess.run(
        [sys.executable, "-c", NO_TORCH, "device", "fetch", "vgg11-base", "input", "--url",
         served.url, "--format", "onnx", "-o", str(tmp_path / "head.onnx")],
        capture_output=True, text=True, timeout=120)
    assert fetched.returncode == 2 and "split 'input' has no head" in fetched.stderr


def _tail_replicas() -> list[str]:
    import ray

    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if "EdgeTail" in a["name"] and f"{TAIL_APP}#" in a["name"]]


def _running_tails() -> int:
    from ray import serve

    states = serve.status().applications[TAIL_APP].deployments["EdgeTail"].replica_states
    return states.get("RUNNING", 0)


def test_killing_a_tail_replica_mid_burst_loses_no_request(served):
    """40 device frames (16 images each, so the tail is busy most of the time) from 8 threads;
    the only tail replica is killed once 8 have been answered. Every request must succeed
    (queued ones are re-routed by Serve; a frame whose replica died mid-request is sent again
    by the device client, which tells Serve's failure from a refusal of the frame) and the
    replica must come back."""
    import ray

    from serve.runner import VariantRunner

    replicas = _tail_replicas()
    assert replicas, "no EdgeTail replica found"
    batch = np.concatenate([served.images, served.images[:4]])
    frame = VariantRunner.load(served.store, "vgg11-base").run_head(batch, "pool1").frame
    expected, _ = in_process(served, "vgg11-base", "pool1", batch)

    def one(_):
        from serve.device.client import DeviceClient

        with DeviceClient(served.url, timeout_s=30, transport="http") as client:  # a hung request is resent
            return client.send_frame(frame, "vgg11-base", "pool1")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(40)]
        deadline = time.monotonic() + 60
        while sum(f.done() for f in futures) < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        ray.kill(ray.get_actor(replicas[0], namespace="serve"), no_restart=True)
        answers = [f.result(timeout=150) for f in futures]
    assert len(answers) == 40
    for answer in answers:
        assert answer["predictions"] == expected.argmax(1).tolist()
    deadline = time.monotonic() + 90
    while _running_tails() < 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _running_tails() >= 1
    assert replicas[0] not in _tail_replicas()
    with requests.Session() as session:
        assert classify(session, served, served.images[0][None], variant="vgg11-base",
                        split="pool3")["bytes_sent"] > 0


def test_sessions_lose_no_frame_when_their_replica_is_killed_or_drained(served):
    """Four devices stream frames over sessions (up to 4 in flight each) while the only tail
    replica is killed, and then while the tail app is redeployed (its replica drains: its
    sessions hear 1012 before it goes). Every frame is answered, with the right class."""
    import threading

    import ray
    from ray import serve

    from serve.app import TAIL_ROUTE, build_tail_app
    from serve.device.stream_client import DeviceSession

    pixels = served.images[:4]
    expected = [int(session_expected(served, "vgg11-base", "pool1", p[None])[0].argmax()) for p in pixels]
    from serve.runner import VariantRunner

    head = VariantRunner.load(served.store, "vgg11-base").calls("pool1")[0]
    features = [head(p[None]) for p in pixels]
    stop, results, errors = threading.Event(), [], []

    def device(i: int) -> None:
        try:
            with DeviceSession(served.url, link=f"cam-{i}", timeout_s=30) as session:
                sent = []
                while not stop.is_set() or sent:
                    while not stop.is_set() and len(session.pending) < 4:
                        sent.append(session.send("vgg11-base", "pool1", features[i]))
                    answer, _ = session.wait(sent.pop(0))
                    results.append((i, answer.ok and answer.value == expected[i]))
                results.append((i, (session.reconnects, tuple(session.close_codes))))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(repr(err))

    threads = [threading.Thread(target=device, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(results) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    ray.kill(ray.get_actor(_tail_replicas()[0], namespace="serve"), no_restart=True)
    deadline = time.monotonic() + 90
    answered = len(results)
    while len(results) < answered + 40 and time.monotonic() < deadline:
        time.sleep(0.1)  # frames flow again through the new replica
    serve.run(build_tail_app(served.args.model_copy(update={"stream_max_fps": 999.0})), name=TAIL_APP,
              route_prefix=TAIL_ROUTE, logging_config={"enable_access_log": False})
    answered = len(results)
    deadline = time.monotonic() + 60
    while len(results) < answered + 40 and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(120)
    assert not errors, errors
    frames = [ok for _, ok in results if isinstance(ok, bool)]
    summaries = [s for _, s in results if isinstance(s, tuple)]
    assert len(frames) >= 120 and all(frames), f"{frames.count(False)} wrong of {len(frames)}"
    assert len(summaries) == 4
    # each device reconnected after the kill and after the drain, told by the old replica (1012)
    assert all(reconnects >= 3 and 1012 in codes for reconnects, codes in summaries), summaries
