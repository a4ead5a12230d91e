"""The KubeRay manifests: the RayService validates against the RayService CRD's OpenAPI schema
(KubeRay's, vendored in deploy/kuberay/) and its serveConfigV2 against Ray Serve's own schema;
it is the cluster Serve config verbatim, which builds the app's arguments."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "deploy" / "kuberay"


@pytest.fixture(scope="module")
def rayservice() -> dict:
    return yaml.safe_load((KUBERAY / "rayservice.yaml").read_text())


def test_rayservice_validates_against_the_crd_schema(rayservice):
    schema = json.loads((KUBERAY / "rayservice.v1.schema.json").read_text())
    jsonschema.validate(rayservice, schema)
    broken = json.loads(json.dumps(rayservice))
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].pop("groupName")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_serve_config_is_a_valid_serve_deploy_config_equal_to_the_cluster_file(rayservice):
    from ray.serve.schema import ServeDeploySchema

    embedded = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    assert embedded == yaml.safe_load((ROOT / "serve" / "serve.cluster.yaml").read_text())


def test_cluster_serve_config_args_are_app_args_with_a_uri_and_two_routers(rayservice):
    from serve.settings import AppArgs

    main, tail = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"]
    args = AppArgs.model_validate(main["args"])
    assert AppArgs.model_validate(tail["args"]) == args
    assert "://" in args.series_dir and args.placement == "resources"
    assert (tail["name"], tail["route_prefix"]) == (f"{main['name']}-tail", "/v1/tail")
    deployments = {d["name"]: d for app in (main, tail) for d in app["deployments"]}
    assert deployments["Router"]["num_replicas"] == args.router_replicas == 2
    assert deployments["EdgeTail"]["autoscaling_config"]["max_replicas"] == args.tail_max_replicas


def test_worker_groups_carry_the_placement_resources(rayservice):
    from serve.app import DEVICE_RESOURCE, EDGE_RESOURCE

    groups = {g["groupName"]: g for g in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    for name, resource in (("edge", EDGE_RESOURCE), ("device", DEVICE_RESOURCE)):
        resources = json.loads(yaml.safe_load(groups[name]["rayStartParams"]["resources"]))
        assert resources == {resource: 1}


def test_rayjob_prunes_with_shared_storage():
    job = yaml.safe_load((KUBERAY / "rayjob-prune.yaml").read_text())
    assert job["kind"] == "RayJob"
    entry = job["spec"]["entrypoint"]
    assert "twostep prune --ray auto" in entry and "--storage-path s3://" in entry


def _k8s_groups(cluster_spec: dict) -> dict[str, dict]:
    """Each worker group as cluster.yaml states a node type: workers, CPUs, GPUs, resources."""
    groups = {}
    for group in cluster_spec["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        custom = group["rayStartParams"].get("resources")
        groups[group["groupName"]] = {
            "min_workers": group["minReplicas"], "max_workers": group["maxReplicas"],
            "resources": {"CPU": int(limits["cpu"]),
                          **({"GPU": int(limits["nvidia.com/gpu"])} if "nvidia.com/gpu" in limits else {}),
                          **(json.loads(yaml.safe_load(custom)) if custom else {})}}
    return groups


def test_kuberay_worker_groups_autoscale_as_the_cluster_yaml_node_types(rayservice):
    """One source of truth: the RayService's groups are cluster.yaml's serving node types (edge,
    device) and the RayJob's its pruning one (prune_gpu, `prune-gpu` in Kubernetes names), with
    the same worker bounds, CPUs, GPUs, custom resources and idle timeout, autoscaled in-tree."""
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    types = {name.replace("_", "-"): {"min_workers": spec["min_workers"], "max_workers": spec["max_workers"],
                                      "resources": spec["resources"]}
             for name, spec in cluster["available_node_types"].items() if name != cluster["head_node_type"]}
    job = yaml.safe_load((KUBERAY / "rayjob-prune.yaml").read_text())
    for spec, wanted in ((rayservice["spec"]["rayClusterConfig"], ("edge", "device")),
                         (job["spec"]["rayClusterSpec"], ("prune-gpu",))):
        assert _k8s_groups(spec) == {name: types[name] for name in wanted}
        assert spec["enableInTreeAutoscaling"] is True
        assert spec["autoscalerOptions"]["idleTimeoutSeconds"] == cluster["idle_timeout_minutes"] * 60
    assert set(types) == {"edge", "device", "prune-gpu"}  # every node type has its Kubernetes group
