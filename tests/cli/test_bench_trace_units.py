"""`twostep bench --trace` without Ray: reading the trace, the rate its calibration uses, the
candidates it prices, and the device client's deadline rule."""

import numpy as np
import pytest

from serve.device.client import DeviceClient
from serve.profiles import estimate_profile
from twostep.bench.config import BenchConfig
from twostep.bench.strategies import LinkCosts
from twostep.bench.trace_run import bench_trace, calibration_bandwidth_mbit, trace_candidates
from twostep.cli import main

STALL = "0 2.0\n3 0.002\n6 2.0\n9 2.0\n"


def _config(tmp_path, text=STALL, **fields):
    path = tmp_path / "trace.txt"
    path.write_text(text)
    return BenchConfig(trace=str(path), **fields)


def test_the_trace_is_cut_and_sped_up(tmp_path):
    trace = bench_trace(_config(tmp_path, trace_start_s=2.0, trace_seconds=6.0, trace_speed=2.0))
    assert trace.duration_s == pytest.approx(3.0)
    assert trace.rate_at(0.2) == pytest.approx(2e6)  # second 2 of the file
    assert trace.rate_at(1.0) == pytest.approx(2e3)  # its stall, now from 0.5 s to 2 s
    assert trace.rate_at(2.5) == pytest.approx(2e6)


def test_unusable_traces_are_refused_with_their_reason(tmp_path):
    with pytest.raises(ValueError, match="lower --trace-speed"):
        bench_trace(_config(tmp_path, trace_speed=100.0))  # 3-second steps of 30 ms
    with pytest.raises(ValueError, match="fewer than 10 requests"):
        bench_trace(_config(tmp_path, fps=1.0, trace_seconds=5.0))
    with pytest.raises(ValueError, match="trace.txt:2"):
        bench_trace(_config(tmp_path, text="0 1\n1 fast\n"))
    with pytest.raises(ValueError, match="not within"):
        bench_trace(_config(tmp_path, trace_start_s=8.0, trace_seconds=5.0))


def test_the_cli_names_a_missing_trace(tmp_path, capsys, tiny_store):
    code = main(["bench", "--series", str(tiny_store.directory), "--out", str(tmp_path / "b"),
                 "--trace", str(tmp_path / "nowhere.txt")])
    assert code != 0 and "nowhere.txt" in capsys.readouterr().err


def test_the_calibration_rate_is_the_time_weighted_median(tmp_path):
    # 1 s at 10, 5 s at 1, 1 s at 0.1 Mbit/s
    trace = bench_trace(_config(tmp_path, text="0 10\n1 1\n6 0.1\n", fps=5.0))
    assert calibration_bandwidth_mbit(trace) == pytest.approx(1.0)


def test_priced_candidates_cover_what_the_device_and_the_fixed_strategies_may_run(tiny_store):
    manifest = tiny_store.manifest
    profile = estimate_profile(manifest, ms_per_mmac=2.0, layer_ms=0.05)
    jpeg = {"accuracy": 0.5, "bytes_mean": 600.0, "encode_ms": 0.2}
    costs = LinkCosts(80, 1.0, jpeg_fixed_ms=4.0)
    candidates = trace_candidates(manifest, profile, 10.0, costs, {}, jpeg)
    keys = {(c.variant_id, c.split, c.strategy) for c in candidates}
    # every variant runs whole on the device, whether or not its manifest offers `output`
    whole = {c.variant_id for c in candidates if c.split == "output"}
    assert whole == {v.id for v in manifest.variants}
    (jpeg_row,) = [c for c in candidates if c.strategy == "jpeg-input"]
    assert jpeg_row.bytes_sent == 600.0 and jpeg_row.head_ms == pytest.approx(2.0)
    assert len(keys) == len(candidates)
    timed = trace_candidates(manifest, profile, 10.0, costs, {(manifest.base, "output"): 77.0}, jpeg)
    assert next(c for c in timed if (c.variant_id, c.split) == (manifest.base, "output")).head_ms == 77.0


def test_the_device_deadline_is_a_factor_of_its_fallbacks_time():
    client = DeviceClient("http://127.0.0.1:9", deadline_factor=2.5)
    table = {"rows": [{"variant": "small", "split": "output", "min_bps": 0, "max_bps": 1e5},
                      {"variant": "big", "split": "pool3", "min_bps": 1e5, "max_bps": None}]}
    assert client.fallback(0.9) is None and client.deadline_ms(None) is None  # no table yet
    client._tables[(0.9, None)] = (0.0, table)
    assert client.fallback(0.9) == ("small", "output")
    assert client.deadline_ms(("small", "output")) is None  # its time not measured
    client.device_ms[("small", "output")] = 12.0
    assert client.deadline_ms(("small", "output")) == pytest.approx(30.0)
    fixed = DeviceClient("http://127.0.0.1:9", frame_deadline_ms=40.0)
    assert fixed.deadline_ms(("small", "output")) == 40.0
    table["rows"][0]["split"] = "pool1"  # nothing runs wholly here: no fallback, no deadline
    assert client.fallback(0.9) is None
    for bad in ({"frame_deadline_ms": 0.0}, {"deadline_factor": -1.0}, {"device_overhead_ms": 3.0}):
        with pytest.raises(ValueError):
            DeviceClient("http://127.0.0.1:9", **bad)


def test_the_device_client_imports_without_torch_or_ray():
    import subprocess
    import sys

    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'torchvision', 'ray'):\n"
            "            raise ImportError('blocked ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import serve.device.client, serve.device.stream_client\n"
            "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]


def test_the_filler_takes_what_the_bucket_holds_at_the_traces_rates(tmp_path):
    import socket
    import time

    from pipeline.traces import Trace
    from twostep.bench.device_trace import BurstSpender

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(0.5)
    # 8 Mbit/s for 10 s, then 8 kbit/s: one byte a millisecond
    trace = Trace("t", np.array([0.0, 10.0]), np.array([8e6, 8e3]), 1000.0)
    spender = BurstSpender(trace, time.time() - 5.0, 1514, sink.getsockname())
    spender(100)  # the bucket is full after 5 s of an idle fast link: one burst's datagram
    assert len(sink.recv(4096)) == 1514 - 42 and spender.sent == 1
    spender(100)  # right after: the message still occupies the link, nothing to take
    assert spender.sent == 1
    spender.start_at = time.time() - 10.2  # 0.2 s into the slow part: about 200 B in the bucket
    spender.free_at = 10.0
    spender(100)
    taken = len(sink.recv(4096)) + 42
    assert 150 <= taken <= 260 and spender.sent == 2


def test_bits_between_integrates_the_rate():
    from pipeline.traces import Trace

    trace = Trace("t", np.array([0.0, 1.0]), np.array([1e6, 1e3]), 2.0)
    assert trace.bits_between(0.5, 1.5) == pytest.approx(0.5e6 + 0.5e3)
    assert trace.bits_between(1.5, 0.5) == 0.0
    assert trace.bits_between(1.5, 2.5) == pytest.approx(0.5e3 + 0.5e6)  # it loops
