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

from pipeline.series import SeriesStore
from serve.head import DeviceHead
from serve.router import Router
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


def build_app(args: AppArgs) -> Application:
    """The router, head and tail deployments bound together; `args` may also be a plain dict."""
    if not isinstance(args, AppArgs):
        args = AppArgs.model_validate(args)
    series_dir = str(Path(args.series_dir).expanduser().resolve())
    SeriesStore.open(series_dir)  # fail here, with the reason, rather than in every replica
    args = args.model_copy(update={"series_dir": series_dir})
    device, edge = placement_resources(args.placement)
    common = {"health_check_period_s": args.health_check_period_s}
    head = DeviceHead.options(
        num_replicas=args.head_replicas, max_ongoing_requests=8,
        ray_actor_options=_actor_options(args.replica_cpus, device), **common,
    ).bind(series_dir, args.torch_threads, args.max_batch)
    scaling = ({"num_replicas": args.tail_replicas} if args.tail_replicas is not None
               else {"autoscaling_config": args.tail_autoscaling_config()})
    tail = EdgeTail.options(
        max_ongoing_requests=args.tail_max_ongoing_requests,
        ray_actor_options=_actor_options(args.replica_cpus, edge), **scaling, **common,
    ).bind(series_dir, args.torch_threads, args.max_batch)
    return Router.options(
        num_replicas=1, max_ongoing_requests=256,
        ray_actor_options=_actor_options(args.router_cpus, edge), **common,
    ).bind(head, tail, args.model_dump())
