"""Whether the deployments can be placed (`serve/fit.py`), on the nodes of the issue that asked
for it: a head offering Ray no CPUs but `device`, and a worker with CPUs and `edge`."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from serve.fit import (
    deployment_news,
    fits,
    node_types,
    read_cluster_config,
    requests_of,
    unplaceable,
    waiting_for_autoscaler,
)

ROOT = Path(__file__).resolve().parents[2]
DEVICE, EDGE = {"device": 0.001}, {"edge": 0.001}
HEAD_NODE = {"device": 1.0, "memory": 1e9, "node:127.0.0.1": 1.0}  # `ray start --num-cpus 0`
WORKER = {"CPU": 2.0, "edge": 1.0, "memory": 1e9}


def test_a_head_replica_no_node_can_host_is_named_with_the_flag_that_fixes_it():
    requests = requests_of(0.1, 0.1, 0.1, DEVICE, EDGE)
    problems = unplaceable(requests, [HEAD_NODE, WORKER], {})
    assert len(problems) == 1
    assert problems[0].startswith("DeviceHead asks for {CPU: 0.1, device: 0.001} per replica")
    assert "--head-cpus" in problems[0] and "{CPU: 0, device: 1}" not in problems[0]
    assert unplaceable(requests_of(0.1, 0.0, 0.1, DEVICE, EDGE), [HEAD_NODE, WORKER], {}) == []


def test_without_custom_resources_any_node_with_cpus_hosts_everything():
    assert unplaceable(requests_of(0.1, 0.1, 0.1, {}, {}), [WORKER], {}) == []
    [problem] = unplaceable(requests_of(0.1, 0.1, 8.0, {}, {}), [WORKER], {})
    assert problem.startswith("EdgeTail asks for {CPU: 8}") and "--replica-cpus" in problem


def test_the_node_types_of_cluster_yaml_are_what_the_autoscaler_may_launch():
    launchable = node_types(read_cluster_config(ROOT / "cluster.yaml"))
    assert set(launchable) == {"prune_gpu", "edge", "device"}  # not the head's own type
    assert launchable["edge"]["edge"] == 1 and launchable["device"]["CPU"] == 2
    requests = requests_of(0.1, 0.1, 0.1, DEVICE, EDGE)
    # only the head is up: nothing fits now, every deployment waits for a node type that fits
    assert unplaceable(requests, [HEAD_NODE], launchable) == []
    waits = waiting_for_autoscaler(requests, [HEAD_NODE], launchable)
    launch = "waits for the autoscaler to launch a node of type"
    assert waits == [f"Router ({{CPU: 0.1, edge: 0.001}}) {launch} edge",
                     f"DeviceHead ({{CPU: 0.1, device: 0.001}}) {launch} device",
                     f"EdgeTail ({{CPU: 0.1, edge: 0.001}}) {launch} edge"]
    assert node_types({"available_node_types": {"off": {"max_workers": 0, "resources": {"CPU": 9}}}}) == {}


def test_a_missing_or_broken_cluster_config_is_named(tmp_path):
    with pytest.raises(ValueError, match="nope.yaml"):
        read_cluster_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(ValueError, match="is not YAML"):
        read_cluster_config(tmp_path / "bad.yaml")


def test_fits_compares_every_asked_resource_and_ignores_zero_requests():
    assert fits({"CPU": 0.0, "device": 0.001}, HEAD_NODE)
    assert not fits({"CPU": 0.1}, HEAD_NODE)
    assert not fits({"GPU": 1.0}, WORKER)


def test_deployment_news_says_each_message_of_an_unhealthy_deployment_once():
    from ray.serve._private.common import DeploymentStatus  # what serve.status() reports

    waiting = SimpleNamespace(status=DeploymentStatus.UPDATING,
                              message="1 replicas have taken more than 30s to be scheduled")
    healthy = SimpleNamespace(status=DeploymentStatus.HEALTHY, message="upscaled to 2 replicas")
    status = SimpleNamespace(applications={"twostep": SimpleNamespace(
        deployments={"DeviceHead": waiting, "Router": healthy})})
    seen = set()
    assert deployment_news(status, ["twostep-tail", "twostep"], seen) == [
        "twostep/DeviceHead UPDATING: 1 replicas have taken more than 30s to be scheduled"]
    assert deployment_news(status, ["twostep-tail", "twostep"], seen) == []
