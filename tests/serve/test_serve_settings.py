"""Builder arguments and the Serve config file, without a cluster: typed validation, the
autoscaling config Serve will accept, `serve.yaml` in step with the defaults, `build_app`."""

import warnings
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from serve.settings import AppArgs

SERVE_YAML = Path(__file__).resolve().parents[2] / "serve" / "serve.yaml"


def test_defaults_and_unknown_keys():
    args = AppArgs(series_dir="x")
    assert args.tail_replicas is None and args.placement == "auto"
    with pytest.raises(ValidationError, match="tail_max_replica"):
        AppArgs(series_dir="x", tail_max_replica=3)
    with pytest.raises(ValidationError):
        AppArgs()  # series_dir is required


@pytest.mark.parametrize("bad", [
    {"accuracy_floor": 1.5}, {"latency_budget_ms": 0}, {"accuracy_floor": 0.9, "latency_budget_ms": 10},
    {"slowdown": 0}, {"slowdown": float("inf")}, {"tail_min_replicas": 3, "tail_max_replicas": 2},
    {"replica_cpus": 0}, {"placement": "moon"}, {"link_bandwidth_bps": -1}, {"bytes_stat": "max"},
    {"switch_margin": 1.0}, {"retries": -1},
])
def test_bad_values_are_refused(bad):
    with pytest.raises(ValidationError):
        AppArgs(series_dir="x", **bad)


def test_args_are_frozen():
    with pytest.raises(ValidationError):
        AppArgs(series_dir="x").slowdown = 2.0


def test_tail_autoscaling_config_is_valid_for_serve():
    from ray.serve.config import AutoscalingConfig

    config = AppArgs(series_dir="x").tail_autoscaling_config()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        parsed = AutoscalingConfig(**config)
    assert (parsed.min_replicas, parsed.max_replicas) == (1, 2)
    assert AppArgs(series_dir="x", tail_replicas=2).tail_autoscaling_config() is None


def test_serve_yaml_is_a_serve_config_in_step_with_the_defaults():
    from ray.serve.schema import ServeDeploySchema

    document = yaml.safe_load(SERVE_YAML.read_text())
    schema = ServeDeploySchema.model_validate(document)
    main, tail_app = schema.applications
    assert (main.import_path, main.route_prefix) == ("serve.app:build_app", "/")
    assert (tail_app.import_path, tail_app.route_prefix) == ("serve.app:build_tail_app", "/v1/tail")
    assert tail_app.name == f"{main.name}-tail"  # the Router finds its tails by this name
    args = AppArgs.model_validate(main.args)
    assert AppArgs.model_validate(tail_app.args) == args
    assert {d.name for d in main.deployments} == {"Router", "DeviceHead"}
    (tail,) = tail_app.deployments
    assert tail.name == "EdgeTail"
    assert tail.autoscaling_config == args.tail_autoscaling_config()
    assert tail.max_ongoing_requests == args.tail_max_ongoing_requests + args.stream_max_sessions
    assert document["http_options"]["host"] == "127.0.0.1"


def test_build_app_without_a_cluster(tiny_store):
    from ray.serve import Application

    from serve.app import build_app, placement_resources

    app = build_app({"series_dir": str(tiny_store.directory), "placement": "local"})
    assert isinstance(app, Application)
    assert placement_resources("local") == ({}, {})
    assert placement_resources("resources") == ({"device": 0.001}, {"edge": 0.001})
    with pytest.raises(ValueError, match="no model series"):
        build_app(AppArgs(series_dir=str(tiny_store.directory / "missing")))
