"""`twostep serve SERIES_DIR`: serve split inference of a series on Ray Serve, over HTTP."""

from __future__ import annotations

import argparse
import json
import os

from pipeline.cost import parse_bandwidth


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("series", help="model series directory")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address the HTTP ingress (and, with HAProxy, the replicas' own HTTP "
                             "ports) bind to: 127.0.0.1 (default) keeps it on this machine; "
                             "0.0.0.0 serves devices on the network")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument("--address", help="Ray cluster to join (default: start a local one)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance")
    parser.add_argument("--ingress", choices=("auto", "haproxy", "proxy"), default="auto",
                        help="HTTP ingress of a Ray session started here: HAProxy (Ray's fast "
                             "ingress) where available, else Serve's proxy (default auto)")
    parser.add_argument("--proxy-location", choices=("EveryNode", "HeadOnly"), default="EveryNode",
                        help="where Serve runs HTTP proxies (default EveryNode; HeadOnly when "
                             "several nodes share one machine and port)")
    parser.add_argument("--router-replicas", type=int,
                        help="Router replicas (default 1; they share per-link state)")
    constraint = parser.add_mutually_exclusive_group()
    constraint.add_argument("--accuracy-floor", type=float,
                            help="default accuracy floor (default: best accuracy - 0.02)")
    constraint.add_argument("--latency-budget-ms", type=float, help="default latency budget")
    parser.add_argument("--edge-profile", help="edge profile (default <series>/profile.json, "
                        "else estimated from MACs at start-up)")
    parser.add_argument("--device-profile", help="device profile (default: derived with --slowdown)")
    parser.add_argument("--slowdown", type=float, help="device = this many times the edge (default 5)")
    parser.add_argument("--link-bandwidth", help="emulate the handoff link: 1mbit, 250kbit, 2e6")
    parser.add_argument("--emulate-link", action="store_true",
                        help="let clients set the emulated link at run time (PUT /v1/link); "
                             "off by default: anyone reaching the server could slow it down")
    parser.add_argument("--link-rtt-ms", type=float, help="emulated link round trip (default 0)")
    parser.add_argument("--tail-replicas", type=int, help="fixed EdgeTail replicas (default: autoscale)")
    parser.add_argument("--tail-max-replicas", type=int, help="autoscaling maximum (default 2)")
    parser.add_argument("--runtime", choices=("onnxruntime", "torch"),
                        help="what runs heads and tails: ONNX Runtime (the series' exported graphs, "
                             "see `twostep export`) or eager PyTorch (default onnxruntime)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other build_app argument (serve/settings.py), JSON values; repeatable")
    parser.add_argument("--check", action="store_true",
                        help="validate and print the resolved arguments, start nothing")


def _parse_set(items: list[str]) -> dict:
    extra = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
    return extra


def resolve_args(args: argparse.Namespace):
    """The validated `AppArgs` from the command line (ValueError naming a bad value)."""
    from pydantic import ValidationError

    from serve.settings import AppArgs

    values = _parse_set(args.set)
    flags = {
        "accuracy_floor": args.accuracy_floor, "latency_budget_ms": args.latency_budget_ms,
        "edge_profile": args.edge_profile, "device_profile": args.device_profile,
        "slowdown": args.slowdown, "link_rtt_ms": args.link_rtt_ms,
        "tail_replicas": args.tail_replicas, "tail_max_replicas": args.tail_max_replicas,
        "router_replicas": args.router_replicas, "emulate_link": args.emulate_link or None,
        "runtime": args.runtime,
        "link_bandwidth_bps": parse_bandwidth(args.link_bandwidth) if args.link_bandwidth else None,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    values["series_dir"] = args.series if "://" in args.series else os.path.abspath(args.series)
    try:
        return AppArgs.model_validate(values)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'args'}: {e['msg']}" for e in err.errors())
        raise ValueError(problems) from None


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    app_args = resolve_args(args)
    from serve.series_source import publish_series

    publish_series(app_args.series_dir)  # without Ray: only checks that the series is readable
    if args.check:
        print(json.dumps(app_args.model_dump(), indent=1, sort_keys=True))
        return 0
    from twostep.ray_env import apply_ray_env

    apply_ray_env()
    import ray

    from serve.app import deploy
    from serve.startup import start_http

    # ray.init() joins RAY_ADDRESS when it is set (a KubeRay pod, a `ray job submit` driver)
    joined = bool(args.address or os.environ.get("RAY_ADDRESS"))
    if joined:
        ray.init(address=args.address or os.environ["RAY_ADDRESS"])
        print("twostep serve: ingress: the cluster's own (RAY_SERVE_ENABLE_HA_PROXY=1 on its nodes "
              "selects HAProxy)", flush=True)
    else:
        from serve.ingress import apply_ingress

        _, line = apply_ingress(args.ingress, args.host)
        print(f"twostep serve: {line}", flush=True)
        ray.init(num_cpus=args.num_cpus, include_dashboard=False)
    series = None
    try:
        # the reference stop_app unpublishes (deploy publishes the same one again, a no-op)
        series = publish_series(app_args.series_dir)
        # On a joined cluster Serve may be shared with other apps: one attempt, never a shutdown.
        host, port = start_http(args.host, args.port, attempts=1 if joined else 3,
                                proxy_location=args.proxy_location)
        print(f"twostep serve: {app_args.series_dir} at http://{host}:{port}/v1/ "
              "(docs/serve.md; Ctrl-C stops)", flush=True)
        deploy(app_args, blocking=True)
    finally:
        stop_app(joined, series, app_args.app_name)
    return 0


def stop_app(joined: bool, series: dict | None, app_name: str) -> None:
    """On a cluster we joined, delete only our app (and its actors); else shut Serve down."""
    from ray import serve

    from serve.app import delete_apps

    if joined:
        delete_apps(app_name, series)
    else:
        serve.shutdown()
