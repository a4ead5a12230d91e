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


def test_cluster_yaml_says_how_to_start():
    text = CLUSTER_YAML.read_text()
    for command in ("ray up cluster.yaml", "ray job submit", "twostep prune --ray auto",
                    "ray down cluster.yaml"):
        assert command in text
