"""twostep on a two-node Ray cluster whose worker cannot see the driver's files.

The cluster (twostep/local_cluster.py): a head node with no CPUs and resource `device`, and a
worker raylet with 2 CPUs and resource `edge`, started in its own mount namespace with a tmpfs
over the driver's directory. Everything runs as a user runs it, through the CLI in
subprocesses: `twostep prune --ray` (trials can only run on the worker; Tune storage on a
directory both nodes see, as NFS would be), then `twostep serve` of that series from the
driver's disk (DeviceHead on the `device` node, two Routers and EdgeTail on the `edge` node),
then stopping it beside another Serve application, which keeps running. Skipped, saying why,
where mount namespaces are not permitted.
"""

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from httputil import free_port, png, stoppable_by_sigint, wait_healthy

from twostep.local_cluster import ALIVE_NODES_SCRIPT, TwoNodeCluster, cluster_env, permitted
from twostep.ray_env import OWN_SERVE_ENV

pytestmark = pytest.mark.integration

RAY_CLIENT_DEFAULT_PORT = 10001
SPLIT = "pool1"  # step 2 prunes conv1_1, which sets the tensor size at pool1
TWOSTEP = str(Path(sys.executable).with_name("twostep"))
OTHER_APP = """
import logging, sys
import ray
from ray import serve
ray.init(address=sys.argv[1], logging_level=logging.ERROR)

@serve.deployment(ray_actor_options={"num_cpus": 0})
class Other:
    def __call__(self, request):
        return "other app ok"

serve.run(Other.bind(), name="other", route_prefix="/other")
"""


NAMED_ACTORS = """
import json, logging, sys
import ray
ray.init(address=sys.argv[1], logging_level=logging.ERROR)
print(json.dumps([a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]))
"""


def _run(argv: list[str], timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=cluster_env())



@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = permitted()
    if reason:
        pytest.skip(f"no isolated worker node here: {reason}")
    from datafiles import write_fashion_like

    from pipeline.base_model import train_base
    from pipeline.config import TrainConfig

    root = tmp_path_factory.mktemp("multinode")
    driver, shared = root / "driver", root / "shared"
    shared.mkdir()
    write_fashion_like(driver / "data", n_train=400, n_test=100, learnable=True)
    train_base(TrainConfig(data_dir=str(driver / "data"), arch="vgg11", width=0.0625, epochs=3,
                           lr=0.05, augment=False, threads=1, out=str(driver / "base.safetensors")),
               progress=False, log=None)
    cache = root / "cache"  # replicas' series cache, fresh for this run
    starting = TwoNodeCluster(driver, worker_cpus=2, log_dir=str(root),
                              env={"TWOSTEP_CACHE_DIR": str(cache), **OWN_SERVE_ENV})
    # Taken before Ray binds them: the head port picked for the first attempt (the cluster must
    # notice and start on fresh ports), and Ray's fixed default for its client server (a second
    # Ray on the machine holds it; once a CI failure).
    with _held(starting.port) as held_head, _held(RAY_CLIENT_DEFAULT_PORT), starting as running:
        yield {"address": running.address, "driver": driver, "shared": shared,
               "taken_head_port": held_head}


@contextlib.contextmanager
def _held(port: int):
    """Listen on 127.0.0.1:port while the block runs (if something else holds it, so much the better)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            pass
        yield port


def test_the_cluster_starts_around_ports_already_taken(cluster):
    assert not cluster["address"].endswith(f":{cluster['taken_head_port']}")
    alive = _run([sys.executable, "-c", ALIVE_NODES_SCRIPT, cluster["address"]]).stdout.split()
    assert alive[-1:] == ["2"]


def _prune_argv(cluster, out: Path, *extra: str) -> list[str]:
    d = cluster["driver"]
    return [TWOSTEP, "prune", "--ray", cluster["address"], "--quiet",
            "--base", str(d / "base.safetensors"), "--data-dir", str(d / "data"), "--out", str(out),
            "--threads", "1", "--rank-batches", "2", "--batch-size", "64", "--step1-divisor", "8",
            "--step1-finetune-epochs", "0.25", "--step1-budget", "1.0", "--step1-max-iterations", "1",
            "--step2-steps", "2", "--step2-finetune-epochs", "0.25", "--bytes-images", "16",
            "--step2-splits", SPLIT, *extra]


@pytest.fixture(scope="module")
def series(cluster):
    out = cluster["driver"] / "series"
    result = _run(_prune_argv(cluster, out, "--storage-path", str(cluster["shared"] / "tune")))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    from pipeline.series import SeriesStore

    return SeriesStore.open(out)


def test_prune_refuses_storage_the_worker_cannot_see(cluster):
    out = cluster["driver"] / "series-local-storage"
    result = _run(_prune_argv(cluster, out))  # default storage: OUT/tune on the driver's disk
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "cannot be used by every node" in result.stderr
    assert "--storage-path" in result.stderr
    assert not (out / "manifest.json").exists()  # refused before anything was written


def test_prune_runs_its_trials_on_the_worker_into_the_drivers_series(series, cluster):
    ids = series.ids()
    assert ids[0] == "vgg11-base" and "vgg11-s1-i1" in ids
    assert [i for i in ids if i.startswith("vgg11-s2-conv1_1-")] == \
        ["vgg11-s2-conv1_1-i1", "vgg11-s2-conv1_1-i2"]
    for vid in ids:
        series.load_model(vid)  # every file present, sha256 as recorded
    runs = [json.loads(line) for line in (series.directory / "tune_runs.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in runs] == ["step1", "step2"]
    for run in runs:
        for trial in run["trials"].values():
            assert trial["error"] is None and trial["path"].startswith(str(cluster["shared"]))


def test_serve_refuses_a_head_no_node_can_host_before_deploying(series, cluster):
    """The head offers Ray no CPUs (only `device`): DeviceHead's default 0.1 CPU fits no node,
    and no autoscaler config says a node type could host it. One line names it and the flag."""
    done = _run([TWOSTEP, "serve", str(series.directory), "--address", cluster["address"],
                 "--port", str(free_port()), "--proxy-location", "HeadOnly"], timeout=180)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "DeviceHead asks for {CPU: 0.1, device: 0.001} per replica and no node offers it" in done.stderr
    assert "change --head-cpus" in done.stderr and "deploying" not in done.stdout


@pytest.fixture(scope="module")
def served(series, cluster):
    port = free_port()
    proc = subprocess.Popen(
        [TWOSTEP, "serve", str(series.directory), "--address", cluster["address"], "--port", str(port),
         "--proxy-location", "HeadOnly", "--router-replicas", "2", "--tail-replicas", "1",
         "--head-cpus", "0", "--ms-per-mmac", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cluster_env(),
        preexec_fn=stoppable_by_sigint)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(f"{url}/v1/health", proc, output=lambda: proc.stdout.read())
        yield {"url": url, "proc": proc}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def _test_images(cluster, count: int = 4) -> np.ndarray:
    from pipeline.data import load_fashion_mnist

    return load_fashion_mnist(cluster["driver"] / "data")[1].images[:count].numpy()


def test_classify_and_tail_answer_from_replicas_on_both_nodes(served, series, cluster):
    from serve.runner import VariantRunner

    url = served["url"]
    variant = "vgg11-s2-conv1_1-i2"
    runner = VariantRunner.load(series, variant)
    for pixels in _test_images(cluster):
        pixels = pixels[None]
        expected = runner.run_tail(runner.run_head(pixels, SPLIT).frame, SPLIT).logits[0]
        answer = requests.post(f"{url}/v1/classify", params={"variant": variant, "split": SPLIT},
                               data=png(pixels), headers={"Content-Type": "image/png"}, timeout=60)
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["logits"], expected, atol=1e-4, rtol=1e-4)
        frame = runner.run_head(pixels, SPLIT).frame
        tail = requests.post(f"{url}/v1/tail", params={"variant": variant, "split": SPLIT}, data=frame,
                             headers={"Content-Type": "application/octet-stream"}, timeout=60)
        assert tail.status_code == 200, tail.text
        np.testing.assert_allclose(tail.json()["logits"][0], expected, atol=1e-4, rtol=1e-4)
        assert tail.json()["predictions"][0] == int(expected.argmax())
    health = requests.get(f"{url}/v1/health", timeout=60).json()
    head, tail, router = (health["replicas"][k] for k in ("head", "tail", "router"))
    assert health["status"] == "ok", health
    assert head["node_id"] != tail["node_id"] and router["node_id"] == tail["node_id"]
    assert "read in place" in head["series"]            # the device node is the driver's machine
    assert "via publisher" in tail["series"] and "via publisher" in router["series"]
    assert any(f["variant"] == variant for f in tail["fetches"])


def test_refuses_weights_that_fail_their_sha256_on_the_remote_node(served, series):
    variant = "vgg11-s1-i1"  # not fetched by the edge node before this test
    path = series.weights_path(variant)
    original = path.read_bytes()
    path.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
    try:
        frame = b"\x00" * 64
        tail = requests.post(f"{served['url']}/v1/tail", params={"variant": variant, "split": "input"},
                             data=frame, headers={"Content-Type": "application/octet-stream"}, timeout=60)
        assert tail.status_code == 500 and "refused on node" in tail.json()["error"], tail.text
        health = requests.get(f"{served['url']}/v1/health", timeout=60).json()
        assert health["status"] == "degraded" and variant in health["replicas"]["tail"]["faults"]
    finally:
        path.write_bytes(original)


def test_two_routers_plan_alike_for_one_link(served):
    url = served["url"]
    pixels = np.zeros((1, 1, 32, 32), np.uint8)
    for bandwidth in (50e3, 50e6):
        choices, routers = set(), set()
        for _ in range(12):
            answer = requests.post(f"{url}/v1/classify", params={"link": f"dev-{int(bandwidth)}",
                                                                 "uplink_bps": bandwidth},
                                   data=png(pixels), headers={"Content-Type": "image/png"}, timeout=60)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            choices.add((body["variant"], body["split"], body["bandwidth_bps"]))
            routers.add(body["router"])
        assert len(routers) == 2, routers   # both replicas answered ...
        assert len(choices) == 1, choices   # ... with one plan for the link


def test_stopping_by_sigterm_deletes_only_its_own_app(served, cluster):
    url = served["url"]
    result = _run([sys.executable, "-c", OTHER_APP, cluster["address"]], timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert requests.get(f"{url}/other", timeout=30).text == "other app ok"
    proc = served["proc"]
    proc.send_signal(signal.SIGTERM)  # as `kill`, systemd or Kubernetes stop it: same as Ctrl-C
    proc.wait(timeout=90)
    deadline = time.monotonic() + 30
    while requests.get(f"{url}/v1/health", timeout=30).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert requests.get(f"{url}/v1/health", timeout=30).status_code == 404
    assert requests.get(f"{url}/other", timeout=30).text == "other app ok"
    listed = _run([sys.executable, "-c", NAMED_ACTORS, cluster["address"]], timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    left = [name for name in json.loads(listed.stdout.strip().splitlines()[-1])
            if name.startswith(("twostep-links-", "twostep-series-"))]
    assert left == []  # its link board and series publisher went with the apps
