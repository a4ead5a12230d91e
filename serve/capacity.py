"""How many edge nodes N devices need at a frame rate and a p99 target, from measured costs.

`bench/bench_capacity.py` measures, per series and transport, the frames/s one EdgeTail replica
serves flat out and what one frame costs each part of the serving path in CPU time
(`FrameCosts`); `edge_plan` turns them into replicas and nodes:

- one replica serves `replica_fps` frames/s and then uses `replica_cores` cores (its runtime
  runs one thread, the replica's event loop another), so a node of C cores runs
  `floor(C / replica_cores)` replicas (at least one);
- its queue is taken as M/M/1: the p99 of a frame's time in a replica is `ln(100) / (mu -
  lambda)` s, so to keep the whole frame under `p99_ms` a replica takes at most `mu - 1000 *
  ln(100) / (p99_ms - fixed_ms)` frames/s, `fixed_ms` being what a frame spends outside the replica's
  queue (client, ingress, loopback), measured at light load (its p99). `queue_factor` (default
  1) stretches that p99 where a deployment measured a longer tail than an exponential's;
- a session transport holds at most `max_sessions` devices per replica (stream_max_sessions);
- the limits shared by the whole cluster are checked, not scaled: the ingress (one HAProxy on
  the head with `--proxy-location HeadOnly`: `ingress_cpu_ms` per frame over the head's cores)
  and the link board (one actor, one report per frame that carries an uplink: one core).
"""

from __future__ import annotations

import dataclasses
import math

P99_QUANTILE_LOG = math.log(100.0)  # an exponential's 99th percentile, in units of its mean


@dataclasses.dataclass(frozen=True)
class FrameCosts:
    """Frames/s one replica serves, CPU ms one frame costs each part of the serving path, and
    the fixed latency outside the replica's queue; measured by bench/bench_capacity.py (`costs`
    of its JSON)."""

    replica_fps: float  # frames/s one EdgeTail replica served flat out
    tail_cpu_ms: float  # the EdgeTail replica: decode, tail, handler, Serve's replica code
    ingress_cpu_ms: float  # HAProxy (or Serve's proxy) passing the frame and its answer
    board_cpu_ms: float  # the link board actor taking the frame's uplink report
    fixed_ms: float  # light-load latency outside the replica: its p99 - tail_cpu_ms
    queue_factor: float = 1.0  # p99 in the queue / M/M/1's (a longer tail measured: > 1)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{field.name} must be a finite number >= 0, got {value!r}")
        for name in ("replica_fps", "tail_cpu_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.queue_factor < 1:
            raise ValueError(f"queue_factor must be >= 1 (M/M/1 or longer), got {self.queue_factor!r}")

    def queue_p99_ms(self, per_replica_fps: float, service_fps: float | None = None) -> float:
        """The p99 of a frame's time in a replica taking `per_replica_fps` (inf at or past its
        capacity); `service_fps`: the replica's capacity (default `replica_fps`)."""
        mu = self.replica_fps if service_fps is None else service_fps
        if per_replica_fps >= mu:
            return math.inf
        return self.queue_p99_scale / (mu - per_replica_fps)

    @property
    def queue_p99_scale(self) -> float:
        """The queue's p99 in ms times the replica's spare frames/s (mu - lambda)."""
        return self.queue_factor * P99_QUANTILE_LOG * 1000.0

    @property
    def replica_cores(self) -> float:
        """Cores one replica uses flat out."""
        return self.replica_fps * self.tail_cpu_ms / 1000.0

    @property
    def core_fps(self) -> float:
        """Frames/s per core of a replica."""
        return 1000.0 / self.tail_cpu_ms


@dataclasses.dataclass(frozen=True)
class EdgePlan:
    devices: int
    fps: float
    p99_ms: float
    replicas: int | None  # None: the p99 target cannot be met at any replica count
    nodes: int | None
    per_node: int  # replicas a node runs
    per_replica_fps: float  # the load one replica takes at the p99 target
    bound: str  # what sets the replica count: "p99", "sessions"
    ingress_cores: float  # cores the ingress needs for the whole load
    board_load: float  # the link board's share of its one core (over 1: it cannot keep up)
    limits: tuple[str, ...]  # shared limits the load exceeds, one line each

    @property
    def offered_fps(self) -> float:
        return self.devices * self.fps


def per_replica_fps(costs: FrameCosts, p99_ms: float) -> float:
    """The frames/s one replica may take and keep the frames' p99 under `p99_ms` (0: none)."""
    queue_ms = p99_ms - costs.fixed_ms
    if queue_ms <= 0:
        return 0.0
    return max(0.0, costs.replica_fps - costs.queue_p99_scale / queue_ms)


def edge_plan(costs: FrameCosts, devices: int, fps: float, p99_ms: float, node_cores: int,
              max_sessions: int | None = None, ingress_cores: float | None = None) -> EdgePlan:
    """Replicas and edge nodes for `devices` each sending `fps` frames/s with the frames' p99
    under `p99_ms`; nodes of `node_cores` cores; `max_sessions`: devices one
    replica holds over sessions (None: HTTP, no cap); `ingress_cores`: the cores the ingress
    has (None: not checked)."""
    if not (isinstance(devices, int) and devices >= 1):
        raise ValueError(f"devices must be an integer >= 1, got {devices!r}")
    for name, value in (("fps", fps), ("p99_ms", p99_ms)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if not (isinstance(node_cores, int) and node_cores >= 1):
        raise ValueError(f"node_cores must be an integer >= 1, got {node_cores!r}")
    if max_sessions is not None and max_sessions < 1:
        raise ValueError(f"max_sessions must be >= 1, got {max_sessions!r}")
    offered = devices * fps
    take = per_replica_fps(costs, p99_ms)
    per_node = replicas_per_node(costs, node_cores)
    by_sessions = math.ceil(devices / max_sessions) if max_sessions else 0
    if take <= 0:
        replicas = nodes = None
        bound = "p99"
    else:
        by_p99 = math.ceil(offered / take - 1e-9)
        replicas = max(by_p99, by_sessions, 1)
        bound = "sessions" if by_sessions > by_p99 else "p99"
        nodes = math.ceil(replicas / per_node)
    need_ingress = offered * costs.ingress_cpu_ms / 1000.0
    board_load = offered * costs.board_cpu_ms / 1000.0
    limits = []
    if ingress_cores is not None and need_ingress > ingress_cores:
        limits.append(f"ingress: {need_ingress:.1f} cores of HAProxy for {offered:,.0f} frames/s, "
                      f"over the head's {ingress_cores:g}: --proxy-location EveryNode behind a "
                      "load balancer")
    if costs.replica_cores > node_cores:
        limits.append(f"a replica uses {costs.replica_cores:.2f} cores flat out, more than a node's "
                      f"{node_cores}: it serves less than {costs.replica_fps:.0f} frames/s there")
    if board_load > 1.0:
        limits.append(f"link board: {offered:,.0f} reports/s is {board_load:.1f}x what its one "
                      "actor takes")
    return EdgePlan(devices, fps, p99_ms, replicas, nodes, per_node, take, bound, need_ingress,
                    board_load, tuple(limits))


def replicas_per_node(costs: FrameCosts, node_cores: int) -> int:
    """Replicas a node of `node_cores` cores runs flat out (at least one)."""
    return max(1, math.floor(node_cores / costs.replica_cores + 1e-9))


def node_cores_of(node_type: dict[str, float]) -> int:
    """Cores of a node of this type: its CPUs."""
    cpus = node_type.get("CPU", 0)
    if cpus < 1:
        raise ValueError(f"an edge node type with {cpus:g} CPUs runs no replica")
    return int(cpus)
