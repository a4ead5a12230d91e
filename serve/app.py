"""The Serve application: `build_app(args) -> Application`, a typed application builder.

    Router (ingress, HTTP) --handle--> DeviceHead    (variant multiplexed, on `device` nodes)
           \\-------------handle--> EdgeTail      (variant multiplexed, autoscaled, `edge` nodes)

Start it with `twostep serve SERIES_DIR`, `serve run serve.app:build_app series_dir=DIR`, or a
config file (`serve run serve/serve.yaml`). Replicas take fractional CPUs (0.1 by default) so
that the three deployments and a second tail replica fit on two cores. Where the cluster
has custom resources `device` and `edge` (e.g. `ray start --resources='{"device": 1}'` on the
device nodes), the head goes to `device` nodes and the router and tail to `edge` nodes.
"""

# No `from __future__ import annotations` here: Serve reads the builder's annotation as a class
# to validate the args dict into `AppArgs`.

from pathlib import Path

import ray
from ray.serve import Application

from pipeline.profiler import load_profile
from serve.head import DeviceHead
from serve.link_board import kill_link_board
from serve.router import Router
from serve.series_source import publish_series, unpublish_series
from serve.settings import AppArgs
from serve.tail import EdgeTail

DEVICE_RESOURCE, EDGE_RESOURCE = "device", "edge"
# A sliver of the custom resource: placement only, any number of replicas per node.
RESOURCE_AMOUNT = 0.001


def placement_resources(placement: str) -> tuple[dict, dict]:
    """(head's, router and tail's) custom resources for `placement`.

    `local`: none. `resources`: `device` and `edge`. `auto`: each only if the running cluster
    has it (none when Ray is not initialised yet).
    """
    if placement == "local":
        return {}, {}
    if placement == "resources":
        have = {DEVICE_RESOURCE, EDGE_RESOURCE}
    else:
        have = set(ray.cluster_resources()) if ray.is_initialized() else set()
    device = {DEVICE_RESOURCE: RESOURCE_AMOUNT} if DEVICE_RESOURCE in have else {}
    edge = {EDGE_RESOURCE: RESOURCE_AMOUNT} if EDGE_RESOURCE in have else {}
    return device, edge


def _actor_options(num_cpus: float, resources: dict) -> dict:
    return {"num_cpus": num_cpus, **({"resources": resources} if resources else {})}


def _profile_docs(args: AppArgs) -> dict:
    """Profile files named in `args`, read here: replicas on other nodes cannot open them."""
    docs = {}
    if args.edge_profile:
        docs["edge"] = load_profile(args.edge_profile)
        edge = Path(args.edge_profile)
        sibling = edge.with_name(f"{edge.name.removesuffix('.json')}.device.json")
        if not args.device_profile and sibling.is_file():
            docs["device"] = load_profile(sibling)
    if args.device_profile:
        docs["device"] = load_profile(args.device_profile)
    return docs


def build_app(args: AppArgs) -> Application:
    """The router, head and tail deployments bound together; `args` may also be a plain dict.

    The series is published here (serve.series_source): replicas on any node of the cluster
    get it from this machine's disk, a shared path or a URI.
    """
    if not isinstance(args, AppArgs):
        args = AppArgs.model_validate(args)
    if "://" not in args.series_dir:
        args = args.model_copy(update={"series_dir": str(Path(args.series_dir).expanduser().resolve())})
    series = publish_series(args.series_dir)  # fails here, with the reason, not in every replica
    docs = _profile_docs(args)
    device, edge = placement_resources(args.placement)
    common = {"health_check_period_s": args.health_check_period_s}
    head_cpus = args.replica_cpus if args.head_cpus is None else args.head_cpus
    head = DeviceHead.options(
        num_replicas=args.head_replicas, max_ongoing_requests=8,
        ray_actor_options=_actor_options(head_cpus, device), **common,
    ).bind(series, args.torch_threads, args.max_batch)
    scaling = ({"num_replicas": args.tail_replicas} if args.tail_replicas is not None
               else {"autoscaling_config": args.tail_autoscaling_config()})
    tail = EdgeTail.options(
        max_ongoing_requests=args.tail_max_ongoing_requests,
        ray_actor_options=_actor_options(args.replica_cpus, edge), **scaling, **common,
    ).bind(series, args.torch_threads, args.max_batch)
    return Router.options(
        num_replicas=args.router_replicas, max_ongoing_requests=256,
        ray_actor_options=_actor_options(args.router_cpus, edge), **common,
    ).bind(head, tail, args.model_dump(), series, docs)


def release_app(app_name: str, series: dict | None = None) -> None:
    """Remove the actors an app of this module leaves beside its deployments (the link board;
    the series publisher when `series` is given). Call after `serve.delete(app_name)`."""
    kill_link_board(app_name)
    if series is not None:
        unpublish_series(series)
