"""cluster.yaml validates against the schema that ships with Ray and has the node types we use."""

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_validates_against_rays_schema(cluster):
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)


def test_cluster_yaml_passes_the_launchers_own_checks(cluster):
    # what `ray up` runs before touching the cloud: defaults filled in, then validated
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_cluster_yaml_node_types(cluster):
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] == "head" and "GPU" not in types["head"]["resources"]
    assert types["prune_gpu"]["resources"]["GPU"] >= 1
    assert types["edge"]["resources"]["edge"] == 1
    assert types["device"]["resources"]["device"] == 1
    assert sum(t.get("min_workers", 0) for t in types.values()) <= cluster["max_workers"]


def test_cluster_yaml_runs_this_checkout_on_the_pinned_ray(cluster):
    from importlib.metadata import version

    # the image's Ray and Python are the ones pyproject pins (a mismatch fails at `ray up`)
    image = cluster["docker"]["image"]
    assert image.startswith(f"rayproject/ray:{version('ray')}-py311"), image
    # the checkout is mounted where setup installs it from, and data for the default demo
    mount = next(target for target, source in cluster["file_mounts"].items() if source == ".")
    assert any(f"pip install --quiet -e {mount}" in cmd for cmd in cluster["setup_commands"])
    head = " ".join(cluster["head_start_ray_commands"])
    assert "ray start --head" in head and "--autoscaling-config" in head
    workers = " ".join(cluster["worker_start_ray_commands"])
    assert "ray start --address=$RAY_HEAD_IP:" in workers
