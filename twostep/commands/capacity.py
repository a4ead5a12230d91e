"""`twostep capacity`: edge nodes for N devices at a frame rate and a p99 target (serve/capacity.py),
from the per-frame costs bench/bench_capacity.py measured."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

from serve.capacity import EdgePlan, FrameCosts, edge_plan, node_cores_of
from serve.fit import node_types, read_cluster_config
from twostep.table import table_lines

TRANSPORTS = ("http", "stream")
COST_FIELDS = [field.name for field in dataclasses.fields(FrameCosts)]


def _numbers(kind, text: str, flag: str) -> list:
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"{flag} takes numbers > 0, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("measured", help="capacity.json of bench/bench_capacity.py "
                        "(e.g. docs/results/capacity/capacity.json)")
    parser.add_argument("--series", help="the measured series to plan for (a part of its path; "
                        "default: the first in the file)")
    parser.add_argument("--transport", choices=TRANSPORTS, default="stream",
                        help="devices send frames over sessions (stream, default) or POST /v1/tail")
    parser.add_argument("--devices", default="1000,10000", help="device counts, comma-separated")
    parser.add_argument("--fps", default="1,10", help="frames per second per device, comma-separated")
    parser.add_argument("--p99-ms", type=float, default=100.0, help="p99 of a frame's time at the edge")
    parser.add_argument("--cluster-config", default="cluster.yaml",
                        help="cluster config whose edge node type gives the cores per node")
    parser.add_argument("--node-type", default="edge", help="the node type EdgeTail runs on")
    parser.add_argument("--node-cores", type=int, help="cores per edge node (instead of the config)")
    parser.add_argument("--max-sessions", type=int, default=256,
                        help="sessions one EdgeTail replica holds (stream_max_sessions)")
    parser.add_argument("--queue-factor", type=float, help="stretch the M/M/1 queue's p99 by "
                        "this (>= 1; default: the file's, else 1)")
    parser.add_argument("--ingress-cores", type=float, help="cores the ingress has (checked if given)")
    parser.add_argument("--json", action="store_true", help="print the plans as JSON")


def measured_costs(measured: dict, series: str | None, transport: str) -> tuple[str, FrameCosts]:
    """(the series' path, its costs for `transport`) from a bench_capacity.py result."""
    runs = measured.get("series") or []
    matching = [r for r in runs if series is None or series in r.get("series", "")]
    if not matching:
        have = ", ".join(r.get("series", "?") for r in runs) or "none"
        raise ValueError(f"--series {series!r} matches no measured series (have: {have})")
    run = matching[0]
    name = run.get("series", "?")
    given = (run.get("costs") or {}).get(transport)
    if given is None:
        raise ValueError(f"{name} has no {transport} measurement")
    missing = [k for k in COST_FIELDS[:-1] if k not in given]  # queue_factor has a default
    if missing:
        raise ValueError(f"{name}'s {transport} costs lack {', '.join(missing)}")
    return name, FrameCosts(**{k: given[k] for k in COST_FIELDS if k in given})


def _node_cores(args: argparse.Namespace) -> int:
    if args.node_cores is not None:
        if args.node_cores < 1:
            raise ValueError(f"--node-cores must be >= 1, got {args.node_cores}")
        return args.node_cores
    types = node_types(read_cluster_config(args.cluster_config))
    if args.node_type not in types:
        raise ValueError(f"--node-type {args.node_type!r} is not a worker node type of "
                         f"{args.cluster_config} (have: {', '.join(types) or 'none'})")
    return node_cores_of(types[args.node_type])


def _row(plan: EdgePlan) -> tuple[str, ...]:
    return (f"{plan.devices:,}", f"{plan.fps:g}", f"{plan.offered_fps:,.0f}",
            "-" if plan.replicas is None else f"{plan.replicas:,}",
            "-" if plan.nodes is None else f"{plan.nodes:,}", str(plan.per_node),
            f"{plan.per_replica_fps:.0f}", plan.bound, f"{plan.ingress_cores:.2f}", f"{plan.board_load:.2f}")


def run(args: argparse.Namespace) -> int:
    path = Path(args.measured)
    if not path.is_file():
        raise FileNotFoundError(f"no measurement at {path} (bench/bench_capacity.py writes one)")
    try:
        measured = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON: {err}") from None
    if not (math.isfinite(args.p99_ms) and args.p99_ms > 0):
        raise ValueError(f"--p99-ms must be a number > 0, got {args.p99_ms:g}")
    if args.queue_factor is not None and not (math.isfinite(args.queue_factor) and args.queue_factor >= 1):
        raise ValueError(f"--queue-factor must be >= 1 (M/M/1's tail or longer), got {args.queue_factor:g}")
    series, costs = measured_costs(measured, args.series, args.transport)
    if args.queue_factor is not None:
        costs = dataclasses.replace(costs, queue_factor=args.queue_factor)
    cores = _node_cores(args)
    sessions = args.max_sessions if args.transport == "stream" else None
    plans = [edge_plan(costs, devices, fps, args.p99_ms, cores, sessions, args.ingress_cores)
             for devices in _numbers(int, args.devices, "--devices")
             for fps in _numbers(float, args.fps, "--fps")]
    if args.json:
        print(json.dumps({"series": series, "transport": args.transport, "costs": vars(costs),
                          "node_cores": cores, "plans": [vars(p) for p in plans]}, indent=1))
        return 0
    print(f"{series}, {args.transport}: a replica serves {costs.replica_fps:.0f} frames/s flat out on "
          f"{costs.replica_cores:.2f} cores ({costs.core_fps:.0f} frames/s a core), {costs.fixed_ms:.1f} ms "
          f"outside its queue, queue p99 {costs.queue_factor:.2f}x M/M/1's; {args.node_type} nodes of "
          f"{cores} cores; p99 <= {args.p99_ms:g} ms (measured {measured.get('date', '?')} on "
          f"{measured.get('cores', '?')} cores)")
    header = ("devices", "fps", "frames/s", "replicas", "nodes", "per node", "per replica", "bound",
              "ingress cores", "board load")
    cells = [_row(p) for p in plans]
    print("\n".join(table_lines(header, cells)))
    for plan in plans:
        if plan.replicas is None:
            print(f"{plan.devices:,} devices at {plan.fps:g}/s: no replica count meets p99 <= "
                  f"{plan.p99_ms:g} ms ({costs.fixed_ms:.1f} ms outside the queue alone)")
        for limit in plan.limits:
            print(f"{plan.devices:,} devices at {plan.fps:g}/s: {limit}")
    return 0
