"""`twostep serve` as a user starts it: its own Ray session with Ray's HAProxy ingress (the
default where the binary exists), both apps, a device's frame answered in one hop, the plan
table, link emulation refused to clients unless enabled, and a clean stop on Ctrl-C."""

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from httputil import free_port, stoppable_by_sigint, wait_healthy

pytestmark = pytest.mark.integration


def wait_for_line(text: str, proc, output, timeout_s: float = 240.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while text not in output():
        assert proc.poll() is None, f"twostep serve exited ({proc.returncode}): {output()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} line within {timeout_s} s: {output()[-3000:]}"
        time.sleep(0.2)


def test_serve_command_with_haproxy_answers_a_device_in_one_hop(tiny_store, tmp_path):
    from serve.device.client import DeviceClient
    from serve.runner import VariantRunner
    from twostep.local_cluster import cluster_env
    from twostep.ray_env import OWN_SERVE_ENV

    port = free_port()
    twostep = str(Path(sys.executable).with_name("twostep"))
    log = open(tmp_path / "serve.log", "w+")  # noqa: SIM115 - read back below
    proc = subprocess.Popen([twostep, "serve", str(tiny_store.directory), "--port", str(port),
                             "--num-cpus", "2", "--tail-replicas", "1", "--ms-per-mmac", "20"],
                            # no request to drain when it stops (HAProxy's default: 30 s)
                            stdout=log, stderr=subprocess.STDOUT, env={**cluster_env(), **OWN_SERVE_ENV},
                            preexec_fn=stoppable_by_sigint)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_line("ready at", proc, (tmp_path / "serve.log").read_text)
        # the ready line comes once the ingress routes: a device started on it gets no 404
        assert requests.get(f"{url}/v1/variants", timeout=30).status_code == 200
        wait_healthy(f"{url}/v1/health", proc, output=(tmp_path / "serve.log").read_text)
        output = (tmp_path / "serve.log").read_text()
        assert "ingress: HAProxy" in output, output[-2000:]
        runner = VariantRunner.load(tiny_store, "vgg11-base")
        pixels = np.random.default_rng(5).integers(0, 256, (1, 1, 32, 32), dtype=np.uint8)
        frame = runner.run_head(pixels, "pool3").frame
        expected = runner.run_tail(frame, "pool3").logits[0]
        with DeviceClient(url) as device:
            answer = device.send_frame(frame, "vgg11-base", "pool3")
            np.testing.assert_allclose(answer["logits"][0], expected, atol=1e-4, rtol=1e-4)
            table = device.plan_table(accuracy_floor=0.8)
            assert table["rows"][0]["min_bps"] == 0.0 and table["rows"][-1]["max_bps"] is None
            result = device.classify(pixels, accuracy_floor=0.8)  # planned from the table
            assert result.variant in tiny_store.ids()
        refused = requests.put(f"{url}/v1/link", json={"bandwidth_bps": 1}, timeout=30)
        assert refused.status_code == 403 and "--emulate-link" in refused.json()["error"]
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) in (0, 130)
        log.close()
