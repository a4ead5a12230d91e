"""Which heads the bench's device times itself at each idle gap, and those times as the planner
takes them.

A line through a few whole models cannot rank the variants after an idle wait (their per-call
time then barely follows their MACs, docs/bench.md), so the device also times the executions
that could win somewhere: at every slowdown of a bandwidth, the best few of the whole series
(what the router may choose, a step-2 variant run whole on the device included) and of the
unpruned and step-1 models ((d) and (e)), by the line; then, planned with those times, every
pool's best that nobody timed (`untimed_picks`). The router and the predictions then use the
device's own time for those, the line elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pipeline.device_times import DeviceTimes
from pipeline.selection import JPEG_INPUT, RAW_INPUT, Candidate, CandidateTable
from pipeline.series import Manifest
from twostep.bench.strategies import Execution, LinkCosts, execution_for, router_candidates

SERIES_TOP, MODEL_TOP = 6, 3


def shortlist(manifest: Manifest, edge_profile: dict, costs: LinkCosts, bandwidth_bps: float,
              slowdowns: Iterable[float], accuracy_floor: float) -> list[Execution]:
    """The device executions worth timing at this bandwidth (mode `device` or `frame`)."""
    link = costs.link(bandwidth_bps)
    picked: dict[str, Execution] = {}
    for slowdown in slowdowns:
        pools = _pools(manifest, router_candidates(manifest, edge_profile, slowdown, costs), accuracy_floor)
        for pool, top in zip(pools, (SERIES_TOP, MODEL_TOP, MODEL_TOP), strict=True):
            if not pool:
                continue
            ranked = CandidateTable(pool).select(link, accuracy_floor=0.0, top_k=top).ranked
            for candidate, _ in ranked:
                execution = execution_for(candidate.variant_id, candidate.split, candidate.strategy)
                picked.setdefault(execution.key, execution)
    return list(picked.values())


def _pools(manifest: Manifest, candidates: list[Candidate], accuracy_floor: float) -> list[list[Candidate]]:
    """Of the candidates that run something on the device: the series' within the floor (the
    router's), the unpruned model's ((d)) and the step-1 model's ((e))."""
    on_device = [c for c in candidates if c.strategy not in (RAW_INPUT, JPEG_INPUT) and c.head_ms > 0]
    return [[c for c in on_device if c.accuracy >= accuracy_floor],
            [c for c in on_device if c.variant_id == manifest.base],
            [c for c in on_device if c.variant_id == manifest.step1_or_base]]


def untimed_picks(manifest: Manifest, edge_profile: dict, costs: LinkCosts, bandwidth_bps: float,
                  slowdowns: Iterable[float], accuracy_floor: float, measured: Mapping[str, float],
                  executions: Iterable[Execution]) -> list[Execution]:
    """The device executions each pool `shortlist` ranks (the series within the floor, the
    unpruned and the step-1 model) above its best timed one, planned with the device's own
    times where `measured` has them: a line that flatters an untimed execution (a small
    whole model's call costs more than the line says) would otherwise win the router's plan and
    go unmeasured."""
    link = costs.link(bandwidth_bps)
    executions = list(executions)
    missing: dict[str, Execution] = {}
    for slowdown in slowdowns:
        times = device_times_at(measured, executions, slowdown, costs.device_request_ms)
        for pool in _pools(manifest, router_candidates(manifest, edge_profile, slowdown, costs, times),
                           accuracy_floor):
            if not pool:
                continue
            # every execution the plan ranks above the first one timed could be the best
            ranked = CandidateTable(pool).select(link, accuracy_floor=0.0, top_k=len(pool)).ranked
            for candidate, _ in ranked:
                execution = execution_for(candidate.variant_id, candidate.split, candidate.strategy)
                if execution.key in measured:
                    break
                missing.setdefault(execution.key, execution)
    return list(missing.values())


def device_times_at(measured: Mapping[str, float], executions: Iterable[Execution],
                    slowdown: float, request_ms: float) -> DeviceTimes:
    """(variant, split) -> the device's time at `slowdown` for each execution timed at speed 1
    (`measured`: execution key -> CPU ms): slowdown x that + the request's own unslowed cost."""
    times: DeviceTimes = {}
    for execution in executions:
        if execution.key in measured and execution.mode in ("device", "frame"):
            times[(execution.variant, execution.split)] = slowdown * measured[execution.key] + request_ms
    return times
