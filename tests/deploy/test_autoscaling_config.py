"""The autoscaling test cluster's config is cluster.yaml's: the same worker node types, worker
bounds and resources, with only the documented changes for one machine (twostep/autoscaling_cluster.py):
CPUs divided by 4 and rounded up, a small object store per worker, the idle timeout's minutes read
as seconds, Ray's fake head type with no CPUs. No Ray session."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from twostep.autoscaling_cluster import (
    CLUSTER_YAML,
    CPU_DIVISOR,
    FAKE_HEAD_TYPE,
    OBJECT_STORE_BYTES,
    cluster_processes,
    fake_config,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_the_cluster_reads_the_repository_cluster_yaml():
    assert CLUSTER_YAML == ROOT / "cluster.yaml" and CLUSTER_YAML.is_file()


def test_worker_node_types_are_cluster_yaml_ones_with_cpus_scaled(cluster):
    generated = fake_config(cluster, "127.0.0.1:1")["available_node_types"]
    workers = {name: spec for name, spec in cluster["available_node_types"].items()
               if name != cluster["head_node_type"]}
    assert set(generated) == {*workers, FAKE_HEAD_TYPE}
    for name, spec in workers.items():
        mine = generated[name]
        assert (mine["min_workers"], mine["max_workers"]) == \
            (spec.get("min_workers", 0), spec["max_workers"]), name
        resources = dict(mine["resources"])
        assert resources.pop("object_store_memory") == OBJECT_STORE_BYTES
        assert resources.pop("CPU") == math.ceil(spec["resources"]["CPU"] / CPU_DIVISOR) >= 1
        declared = {k: v for k, v in spec["resources"].items() if k != "CPU"}
        assert resources == declared, name  # GPUs and custom resources as declared
    assert generated[FAKE_HEAD_TYPE] == {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}


def test_cluster_wide_settings_follow_cluster_yaml(cluster):
    config = fake_config(cluster, "127.0.0.1:1")
    assert config["max_workers"] == cluster["max_workers"]
    assert config["upscaling_speed"] == cluster["upscaling_speed"]
    assert config["idle_timeout_minutes"] * 60 == pytest.approx(cluster["idle_timeout_minutes"])
    assert config["provider"]["gcs_address"] == "127.0.0.1:1"


def test_a_changed_cluster_yaml_changes_the_cluster(cluster):
    changed = yaml.safe_load(yaml.safe_dump(cluster))
    changed["available_node_types"]["edge"]["max_workers"] = 7
    changed["available_node_types"]["tpu"] = {"min_workers": 0, "max_workers": 1,
                                              "resources": {"CPU": 8, "TPU": 4}, "node_config": {}}
    types = fake_config(changed, "127.0.0.1:1")["available_node_types"]
    assert types["edge"]["max_workers"] == 7
    assert types["tpu"]["resources"] == {"CPU": 2, "TPU": 4, "object_store_memory": OBJECT_STORE_BYTES}


def test_a_min_workers_override_changes_that_type_only(cluster):
    plain = fake_config(cluster, "127.0.0.1:1")
    config = fake_config(cluster, "127.0.0.1:1", min_workers={"edge": 0})
    assert cluster["available_node_types"]["edge"]["min_workers"] == 1  # cluster.yaml keeps its own
    assert config["available_node_types"]["edge"]["min_workers"] == 0
    for generated in (config, plain):
        del generated["available_node_types"]["edge"]["min_workers"]
    assert config == plain
    with pytest.raises(ValueError, match="not a worker node type"):
        fake_config(cluster, "127.0.0.1:1", min_workers={"gpu": 0})
    with pytest.raises(ValueError, match="must be in 0..4"):
        fake_config(cluster, "127.0.0.1:1", min_workers={"edge": 5})


def test_the_config_is_one_ray_autoscaler_accepts(cluster):
    from ray.autoscaler._private.util import validate_config

    validate_config(fake_config(cluster, "127.0.0.1:1"))


def test_teardown_finds_the_head_tree_and_orphans_naming_the_temp_dir(tmp_path):
    marker = str(tmp_path / "tsa-marker")
    head = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker])
    other = subprocess.Popen(["sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        while len(found := cluster_processes(head.pid, marker)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # the shell forks its background sleep
        assert head.pid in found and orphan.pid in found and other.pid not in found
        assert len(found) == 3
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # the shell and its background sleep
        for proc in (head, orphan, other):
            proc.kill()
            proc.wait()
