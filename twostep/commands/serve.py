"""`twostep serve SERIES_DIR`: serve split inference of a series on Ray Serve, over HTTP."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import threading
import time

from serve.fit import BOOTSTRAP_CONFIG
from serve.process.ingress import MODES
from twostep.cli import UsageError
from twostep.config_flags import add_config_flags, flag_values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("series", help="model series directory")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address the HTTP ingress (and, with HAProxy, the replicas' own HTTP "
                             "ports) bind to: 127.0.0.1 (default) keeps it on this machine; "
                             "0.0.0.0 serves devices on the network")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument("--address", help="Ray cluster to join (default: start a local one)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance")
    parser.add_argument("--ingress", choices=MODES, default="auto",
                        help="HTTP ingress of a Ray session started here: HAProxy (Ray's fast "
                             "ingress) where available, else Serve's proxy (default auto)")
    parser.add_argument("--cluster-config", help="the cluster's config (cluster.yaml): its node types "
                        "are what the autoscaler can launch for a deployment no node can host yet "
                        f"(default: {BOOTSTRAP_CONFIG} where `ray up` left it, else none)")
    parser.add_argument("--proxy-location", choices=("EveryNode", "HeadOnly"), default="EveryNode",
                        help="where Serve runs HTTP proxies (default EveryNode; HeadOnly when "
                             "several nodes share one machine and port)")
    from serve.settings import AppArgs

    add_config_flags(parser.add_argument_group("the application (serve/settings.py AppArgs: the "
                                               "keys of a Serve config file's args)"),
                     AppArgs, skip=("series_dir",))
    parser.add_argument("--check", action="store_true",
                        help="validate and print the resolved arguments, start nothing")


def resolve_args(args: argparse.Namespace):
    """The validated `AppArgs` from the command line (ValueError naming a bad value)."""
    from pipeline.config import build_config
    from serve.settings import AppArgs

    values = flag_values(args, AppArgs.model_fields)
    values["series_dir"] = args.series if "://" in args.series else os.path.abspath(args.series)
    return build_config(AppArgs, values)


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
    from serve.process.startup import start_http

    # this driver's own Ray and Serve lines at the app's level (INFO floods the terminal)
    level = getattr(logging, app_args.log_level)
    logging.getLogger("ray.serve").setLevel(level)
    # ray.init() joins RAY_ADDRESS when it is set (a KubeRay pod, a `ray job submit` driver)
    joined = bool(args.address or os.environ.get("RAY_ADDRESS"))
    if joined:
        ray.init(address=args.address or os.environ["RAY_ADDRESS"], logging_level=level)
        print("twostep serve: ingress: the cluster's own (RAY_SERVE_ENABLE_HA_PROXY=1 on its nodes "
              "selects HAProxy)", flush=True)
    else:
        from serve.process.ingress import apply_ingress

        _, line = apply_ingress(args.ingress, args.host)
        print(f"twostep serve: {line}", flush=True)
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level=level)
    # SIGTERM (kill, systemd, Kubernetes) stops like Ctrl-C: the apps deleted on the way out.
    # Set after ray.init: with Ray's own handling a SIGTERM'd `twostep serve --address` left its
    # apps deployed on the cluster (its log: Ray's core worker reporting the signal).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    check_placement(app_args, args.cluster_config)  # before anything is started on the cluster
    series = None
    try:
        # the reference stop_app unpublishes (deploy publishes the same one again, a no-op)
        series = publish_series(app_args.series_dir)
        # On a joined cluster Serve may be shared with other apps: one attempt, never a shutdown.
        host, port = start_http(args.host, args.port, attempts=1 if joined else 3,
                                log_level=app_args.log_level,
                                proxy_location=args.proxy_location)
        print(f"twostep serve: deploying {app_args.series_dir} ...", flush=True)
        with watching(app_args.app_name):
            deploy(app_args)
        url = f"http://{_url_host(host)}:{port}/v1/"
        wait_until_routed(f"http://{_url_host(_local(host))}:{port}/v1/health", url)
        print(f"twostep serve: {app_args.series_dir} ready at {url} (docs/serve.md; Ctrl-C stops)",
              flush=True)
        while True:
            time.sleep(3600)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the clean-up short
        stop_app(joined, series, app_args.app_name)
    return 0


def check_placement(app_args, cluster_config: str | None) -> None:
    """Refuse, before deploying, a deployment that no node and no launchable node type can
    host; say which ones wait for the autoscaler."""
    import ray

    from serve.app import deployment_requests
    from serve.fit import node_types, read_cluster_config, unplaceable, waiting_for_autoscaler

    requests = list(deployment_requests(app_args).values())
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    launchable = node_types(read_cluster_config(cluster_config))
    problems = unplaceable(requests, nodes, launchable)
    if problems:
        raise UsageError("\n".join(problems))
    for line in waiting_for_autoscaler(requests, nodes, launchable):
        print(f"twostep serve: {line}", flush=True)


@contextlib.contextmanager
def watching(app_name: str, every_s: float = 5.0):
    """While the block deploys, print what Serve says of replicas not yet running (waiting to be
    scheduled, failing to start), each message once."""
    from ray import serve

    from serve.fit import deployment_news
    from serve.settings import tail_app_name

    stop, seen = threading.Event(), set()

    def watch() -> None:
        while not stop.wait(every_s):
            try:
                lines = deployment_news(serve.status(), (tail_app_name(app_name), app_name), seen)
            except Exception:  # noqa: BLE001 - a status poll that fails says nothing
                continue
            for line in lines:
                print(f"twostep serve: {line}", flush=True)

    thread = threading.Thread(target=watch, daemon=True, name="deploy-watch")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every_s)


def _local(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def wait_until_routed(health_url: str, url: str, patience_s: float = 60.0) -> None:
    """Return once `health_url` answers 200: Serve reports an app running before its ingress
    routes to it (HAProxy took ~10 s more here), and a device started on the ready line must not
    get 404s. Says so once when that takes longer than `patience_s`; Ctrl-C stops the wait."""
    import urllib.error
    import urllib.request

    start = time.monotonic()
    told = False
    while True:
        try:
            with urllib.request.urlopen(health_url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if not told and time.monotonic() - start > patience_s:
            print(f"twostep serve: deployed, but {url}health has not answered for {patience_s:.0f} s; "
                  "still waiting (see the log above)", flush=True)
            told = True
        time.sleep(0.5)


def stop_app(joined: bool, series: dict | None, app_name: str) -> None:
    """On a cluster we joined, delete only our app (and its actors); else shut Serve down."""
    from ray import serve

    from serve.app import delete_apps

    if joined:
        delete_apps(app_name, series)
    else:
        serve.shutdown()
