"""The Serve application: `build_app(args) -> Application`, a typed application builder.

    app "twostep":      Router (ingress, `/`) --handle--> DeviceHead (variant multiplexed, `device` nodes)
                               \\--------------handle--> EdgeTail of the tail app
    app "twostep-tail": EdgeTail (ingress, `/v1/tail`; variant multiplexed, autoscaled, `edge` nodes)

Two applications, so that a device's frame reaches a tail in one hop. Start them with
`twostep serve SERIES_DIR`, or a config file naming both (`serve run serve/serve.yaml`).
Replicas take fractional CPUs (0.1 by default) so that the deployments and a second tail replica
fit on two cores. Where the cluster has custom resources `device` and `edge` (e.g.
`ray start --resources='{"device": 1}'` on the device nodes), the head goes to `device` nodes and
the router and tail to `edge` nodes.
"""

# No `from __future__ import annotations` here: Serve reads the builder's annotation as a class
# to validate the args dict into `AppArgs`.

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import ray
from ray.serve import Application

from pipeline.profile_paths import device_profile_of
from pipeline.profiler import load_profile
from serve.fit import Request, requests_of
from serve.head import DeviceHead
from serve.link_board import kill_link_board
from serve.router import Router
from serve.series_source import publish_series, unpublish_series
from serve.settings import AppArgs, tail_app_name
from serve.tail import EdgeTail

DEVICE_RESOURCE, EDGE_RESOURCE = "device", "edge"
TAIL_ROUTE = "/v1/tail"
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


def deployment_requests(args: AppArgs) -> dict[str, Request]:
    """What one replica of each deployment asks Ray for (`serve.fit` checks they can be placed)."""
    device, edge = placement_resources(args.placement)
    head_cpus = args.replica_cpus if args.head_cpus is None else args.head_cpus
    return {r.deployment: r for r in requests_of(args.router_cpus, head_cpus, args.replica_cpus,
                                                 device, edge)}


def _profile_docs(args: AppArgs) -> dict:
    """Profile files named in `args`, read here: replicas on other nodes cannot open them."""
    docs = {}
    if args.edge_profile:
        docs["edge"] = load_profile(args.edge_profile)
        sibling = device_profile_of(args.edge_profile)
        if not args.device_profile and sibling.is_file():
            docs["device"] = load_profile(sibling)
    if args.device_profile:
        docs["device"] = load_profile(args.device_profile)
    return docs


def build_app(args: AppArgs) -> Application:
    """The main application: the Router (ingress at `/`) and DeviceHead; `args` may also be a
    plain dict. Its `/v1/classify` calls the EdgeTail of the tail application (`build_tail_app`,
    named `<this app's name>-tail`), which must be deployed too (`deploy` does both).

    The series is published here (serve.series_source): replicas on any node of the cluster
    get it from this machine's disk, a shared path or a URI.
    """
    return _main_app(*_prepare(args))


def _main_app(args: AppArgs, series: dict) -> Application:
    requests = deployment_requests(args)
    common = {"health_check_period_s": args.health_check_period_s}
    head = DeviceHead.options(
        num_replicas=args.head_replicas, max_ongoing_requests=8,
        ray_actor_options=requests["DeviceHead"].actor_options(), **common,
    ).bind(series, args.torch_threads, args.max_batch, args.runtime)
    return Router.options(
        num_replicas=args.router_replicas, max_ongoing_requests=256,
        ray_actor_options=requests["Router"].actor_options(), **common,
    ).bind(head, args.model_dump(), series, _profile_docs(args))


def build_tail_app(args: AppArgs) -> Application:
    """The tail application: EdgeTail as its own ingress (mounted at `/v1/tail`), so a device's
    frame reaches a tail replica in one hop. `links_app` names the main app whose Routers
    share per-link state (uplink reports sent with frames go there)."""
    return _tail_app(*_prepare(args))


def _tail_app(args: AppArgs, series: dict) -> Application:
    scaling = ({"num_replicas": args.tail_replicas} if args.tail_replicas is not None
               else {"autoscaling_config": args.tail_autoscaling_config()})
    return EdgeTail.options(
        # an open session holds one of Serve's request slots for its whole life
        max_ongoing_requests=args.tail_max_ongoing_requests + args.stream_max_sessions,
        ray_actor_options=deployment_requests(args)["EdgeTail"].actor_options(),
        health_check_period_s=args.health_check_period_s, **scaling,
    ).bind(series, args.torch_threads, args.max_batch, args.max_body_bytes, args.app_name,
           dataclasses.asdict(args.estimator_config()), args.tail_batch_size, args.runtime,
           args.stream_limits())


def _prepare(args: AppArgs | dict) -> tuple[AppArgs, dict]:
    if not isinstance(args, AppArgs):
        args = AppArgs.model_validate(args)
    if "://" not in args.series_dir:
        args = args.model_copy(update={"series_dir": str(Path(args.series_dir).expanduser().resolve())})
    # fails here, with the reason, not in replicas; `serve run` builds before it joins RAY_ADDRESS
    return args, publish_series(args.series_dir, join_from_env=True)


def deploy(args: AppArgs, blocking: bool = False, also: Sequence = ()) -> dict:
    """Deploy the tail and the main application together (Serve must be started), with the
    series published once for both, and the applications `also` names (`serve.RunTarget`s)
    beside them; returns the series' reference (for `delete_apps`)."""
    from ray import serve
    from ray.serve import RunTarget

    logging_config = {"enable_access_log": False, "log_level": args.log_level}
    args, series = _prepare(args)
    # Both at once: the Router finds its tails when it first needs them, so neither app waits
    # for the other's replicas (one after the other took ~9 s more here).
    serve.run_many([
        RunTarget(_tail_app(args, series), name=tail_app_name(args.app_name), route_prefix=TAIL_ROUTE,
                  logging_config=logging_config),
        RunTarget(_main_app(args, series), name=args.app_name, route_prefix="/",
                  logging_config=logging_config),
        *also,
    ], blocking=blocking)
    return series


def delete_apps(app_name: str, series: dict | None = None) -> None:
    """Delete the main and tail applications and the actors they leave (the link board; the
    series publisher when `series` is given). Other applications keep running."""
    from ray import serve

    running = serve.status().applications
    try:
        for name in (app_name, tail_app_name(app_name)):
            if name in running:
                serve.delete(name)
    finally:
        kill_link_board(app_name)
        if series is not None:
            unpublish_series(series)
