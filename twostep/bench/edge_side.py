"""The edge of `twostep bench`: Ray and the Serve app, bound to one address, until stdin closes.

    python -m twostep.bench.edge_side --series DIR --host IP --port P --edge-profile FILE \
        --accuracy-floor F [--sink-port U] [--ray-address ADDR]

Run inside the edge namespace of a shaped link (its own Ray instance there), or in the host
namespace on 127.0.0.1 with the link emulated. Prints `READY` once the app answers, then serves
until its stdin is closed (the orchestrator's exit closes it too). `--sink-port` also opens a UDP
socket that swallows the device's filler datagrams (see `device_side`).
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import threading
import urllib.request

from pydantic import Field

from pipeline.config import ConfigError, ConfigModel, build_config
from pipeline.runtime import DEFAULT_RUNTIME, Runtime
from serve.process.ingress import Ingress
from twostep.config_flags import add_config_flags, flag_values


class EdgeOptions(ConfigModel):
    """The edge process of `twostep bench` (started by the orchestrator, not by hand)."""

    series: str = Field(description="the series directory to serve")
    host: str = Field(description="address to serve on (the edge's veth, or 127.0.0.1)")
    port: int = Field(ge=1, le=65535, description="HTTP port")
    edge_profile: str = Field(description="this machine's profile of every variant")
    accuracy_floor: float = Field(ge=0.0, le=1.0, description="the router's accuracy floor")
    sink_port: int = Field(0, ge=0, le=65535, description="UDP port swallowing the device's filler "
                           "datagrams (0: none)")
    ray_address: str | None = Field(None, description="Ray cluster to join (none: a new one here)")
    ingress: Ingress = Field("auto", description="HTTP ingress of the Ray session started here")
    runtime: Runtime = Field(DEFAULT_RUNTIME, description="what runs the tails")


def udp_sink(host: str, port: int) -> None:
    """Receive and drop datagrams on (host, port) in a daemon thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))

    def drain() -> None:
        while True:
            sock.recv(65536)

    threading.Thread(target=drain, daemon=True).start()


def start_edge(series: str, host: str, port: int, edge_profile: str, accuracy_floor: float,
               ray_address: str | None = None, ingress: str = "auto", runtime: str = DEFAULT_RUNTIME) -> None:
    """Start (or join) Ray and run the Serve app on host:port with one fixed tail replica."""
    import ray

    from serve.app import deploy
    from serve.process.startup import start_http
    from serve.settings import AppArgs
    from twostep.ray_env import OWN_SERVE_ENV, apply_ray_env

    # A Ray of its own (no address): this process shuts its Serve down, with no request to drain
    # (the 30 s HAProxy default made every `twostep bench` wait 30 s more at its end).
    apply_ray_env(None, *(() if ray_address else (OWN_SERVE_ENV,)))
    if not ray.is_initialized():
        if not ray_address:
            from serve.process.ingress import apply_ingress

            # HAProxy reaches local replicas on 127.0.0.1, so inside the edge's network namespace
            # they (and it) bind every interface of it: its veth and its loopback, nothing else.
            # On the emulated link there is no namespace: everything stays on 127.0.0.1.
            in_namespace = host != "127.0.0.1"
            chosen, line = apply_ingress(ingress, "0.0.0.0" if in_namespace else host)
            print(f"edge: {line}", file=sys.stderr, flush=True)
            if chosen == "haproxy" and in_namespace:
                host = "0.0.0.0"
        # "local": a new instance here, never one that RAY_ADDRESS or `ray start` points at.
        ray.init(address=ray_address or "local", num_cpus=None if ray_address else 2,
                 include_dashboard=False,
                 log_to_driver=False, logging_level=logging.ERROR)
    start_http(host, port)
    args = AppArgs(series_dir=series, accuracy_floor=accuracy_floor, edge_profile=edge_profile,
                   runtime=runtime, tail_replicas=1, baselines=True)
    from twostep.bench.noop_app import noop_target

    deploy(args, also=[noop_target()])  # the no-op: Serve's own one-hop floor, timed beside
    with urllib.request.urlopen(f"http://{host}:{port}/v1/health", timeout=60) as response:
        response.read()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_flags(parser, EdgeOptions)
    try:
        args = build_config(EdgeOptions, flag_values(parser.parse_args(argv), EdgeOptions.model_fields))
    except ConfigError as err:
        parser.error(str(err))
    if args.sink_port:
        udp_sink(args.host, args.sink_port)
    start_edge(args.series, args.host, args.port, args.edge_profile, args.accuracy_floor,
               args.ray_address, args.ingress, args.runtime)
    print("READY", flush=True)
    sys.stdin.read()  # until the orchestrator closes the pipe
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
