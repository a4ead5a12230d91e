"""Calibration of `twostep bench`: what one request costs on this serving path besides its
work (bytes on the link, fixed time), and how the device's calls relate to the edge's profile at
each bandwidth's idle gap (a call after a wait costs more than back-to-back calls say)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.selection import candidates_from_series
from pipeline.series import Manifest
from pipeline.split import split_points
from twostep.bench.config import BenchConfig
from twostep.bench.emulation import refill_gap_ms
from twostep.bench.shortlist import device_times_at, shortlist, untimed_picks
from twostep.bench.strategies import Execution, LinkCosts

Log = Callable[[str], None]
Timed = dict[float, dict[str, float]]  # idle gap (ms) -> {execution key: the device's ms}


@dataclass
class Calibrated:
    """What calibration found: its document (for bench.json), the costs per request, the costs
    at each bandwidth (the device fitted at its idle gap), and the device's own times."""

    document: dict
    costs: LinkCosts
    costs_at: dict[float, LinkCosts]
    device_ms: Callable[[float, float], dict]  # (Mbit/s, slowdown) -> {(variant, split): ms}


def calibrate(device, link, manifest: Manifest, edge_profile: dict, config: BenchConfig,
              bandwidths: tuple[float, ...], floor: float, log: Log) -> Calibrated:
    """Time the serving path's fixed cost (the device process's `calibrate` job) and the
    device's calls at every idle gap the grid has; log what was found."""
    link.set_rate(1e9)
    last_features = split_points(manifest.base_arch)[-2]  # pool5 of a VGG
    probe = Execution("frame", manifest.step1_or_base, last_features)
    base_id = manifest.base
    smallest = min(manifest.variants, key=lambda v: v.macs).id
    calibration = device.ask({
        "kind": "calibrate", "execution": probe.to_dict(), "requests": config.calibration_requests,
        "whole": [Execution("device", vid, "output").to_dict() for vid in (base_id, smallest)],
        "jpeg": Execution("jpeg", base_id, "input").to_dict()})
    calibration.update(device_model(calibration["whole_device_ms"], edge_profile, (base_id, smallest)))
    costs = LinkCosts(calibration["overhead_bytes"], calibration["fixed_ms"],
                      calibration["device_factor"], calibration["device_overhead_ms"],
                      calibration["jpeg_fixed_ms"], calibration["device_request_ms"])
    # The device's calls at each bandwidth's idle gap (the link's refill before a request):
    # a call after a wait costs more than the back-to-back calibration says.
    gaps = {b: refill_gap_ms(link.shaped.burst_bytes, b * 1e6) if link.shaped else 0.0
            for b in bandwidths}
    fit_on = calibration_executions(manifest)
    distinct = sorted(set(gaps.values()))
    calls = max(10, config.calibration_requests // 3)
    called = device.ask({"kind": "device_calls", "executions": [e.to_dict() for e in fit_on],
                         "gaps_ms": distinct, "requests": calls})
    profiled = profiled_device_work(manifest, edge_profile, fit_on)
    by_gap = {gap: fit_device(profiled, measured) for gap, measured in zip(distinct, called, strict=True)}
    costs_at = {b: dataclasses.replace(costs, **by_gap[gaps[b]]) for b in bandwidths}
    # The line cannot rank variants whose calls after a wait barely follow their MACs: the
    # device also times, at each gap, every execution that could win there by the line.
    timed, known, left = time_shortlists(device, manifest, edge_profile, costs_at, gaps, bandwidths,
                                         config.slowdowns, floor, dict(zip(distinct, called, strict=True)),
                                         fit_on, calls)
    calibration["device_at_gap"] = {repr(gap): {**by_gap[gap], "measured": timed[gap],
                                                "untimed_left": left.get(gap, [])} for gap in distinct}
    for gap, keys in left.items():
        log(f"   warning: after {MAX_ROUNDS} rounds at {gap:.1f} ms idle the router may still plan with "
            f"{len(keys)} execution(s) the device did not time ({', '.join(keys[:3])}"
            f"{', ...' if len(keys) > 3 else ''}): their predictions use the line")
    for b in bandwidths:
        fit = by_gap[gaps[b]]
        log(f"   {b:g} Mbit/s ({gaps[b]:.1f} ms idle before a request): device call = "
            f"{fit['device_factor']:.2f} x profile + {fit['device_overhead_ms']:.2f} ms; "
            f"{len(timed[gaps[b]])} executions timed by the device itself")
    log(f"   per request: {costs.overhead_bytes:.0f} B besides the payload "
        f"({calibration['overhead_source']}), {costs.fixed_ms:.1f} ms fixed ("
        f"{'a device session' if config.transport == 'stream' else 'an HTTP request'} + Serve hop; "
        f"Serve's own HTTP no-op one-hop floor here {calibration['floor_ms']:.1f} ms, "
        f"{costs.fixed_ms / calibration['floor_ms']:.2f}x); "
        f"device call back to back = {costs.device_factor:.2f} x profile + "
        f"{costs.device_overhead_ms:.2f} ms (on {base_id} and {smallest}; the predictions use "
        f"the fits at each bandwidth's idle gap below); a JPEG through /v1/classify "
        f"{costs.jpeg_fixed_ms:.1f} ms fixed (Router hops, JPEG decode)")

    def device_ms(mbit: float, slowdown: float) -> dict:
        return device_times_at(timed[gaps[mbit]], known, slowdown, costs.device_request_ms)

    return Calibrated(calibration, costs, costs_at, device_ms)


def time_shortlists(device, manifest: Manifest, edge_profile: dict, costs_at: dict[float, LinkCosts],
                    gaps: dict[float, float], bandwidths: tuple[float, ...], slowdowns: tuple[float, ...],
                    floor: float, measured: dict[float, dict[str, float]], fit_on: list[Execution],
                    calls: int) -> tuple[Timed, list[Execution], dict[float, list[str]]]:
    """The device's own speed-1 time at each gap of every execution a bandwidth with that gap
    short-lists (`shortlist`), besides those already `measured` there, then of every plan's
    untimed best (`untimed_picks`): ({gap: {execution key: ms}}, every execution timed, {gap:
    keys a plan still ranks above its best timed one after `MAX_ROUNDS`})."""
    wanted: dict[float, dict[str, Execution]] = {gap: {} for gap in measured}
    for mbit in bandwidths:
        for execution in shortlist(manifest, edge_profile, costs_at[mbit], mbit * 1e6, slowdowns, floor):
            wanted[gaps[mbit]].setdefault(execution.key, execution)
    timed = {}
    for gap, done in measured.items():
        todo = [e.to_dict() for key, e in wanted[gap].items() if key not in done]
        extra = device.ask({"kind": "device_calls", "executions": todo, "gaps_ms": [gap],
                            "requests": calls})[0] if todo else {}
        timed[gap] = {**done, **extra}
    known = {e.key: e for e in fit_on}
    for executions in wanted.values():
        known.update(executions)
    # Planned with those times, a pool's best may be an execution nobody timed: time it too,
    # until every pool's best at every point was timed (as `DeviceClient.time_heads` does).
    def untimed(gap: float) -> dict[str, Execution]:
        todo: dict[str, Execution] = {}
        for mbit in (b for b in bandwidths if gaps[b] == gap):
            for execution in untimed_picks(manifest, edge_profile, costs_at[mbit], mbit * 1e6, slowdowns,
                                           floor, timed[gap], known.values()):
                todo.setdefault(execution.key, execution)
        return todo

    for _ in range(MAX_ROUNDS):
        added = 0
        for gap in measured:
            todo = list(untimed(gap).values())[:MAX_PER_ROUND]
            if todo:
                timed[gap].update(device.ask({"kind": "device_calls", "gaps_ms": [gap], "requests": calls,
                                              "executions": [e.to_dict() for e in todo]})[0])
                known.update((e.key, e) for e in todo)
                added += len(todo)
        if not added:
            break
    left = {gap: sorted(untimed(gap)) for gap in measured}
    return timed, list(known.values()), {gap: keys for gap, keys in left.items() if keys}


MAX_ROUNDS = 4  # rounds of timing a plan's untimed best (one or two settle it in practice)
MAX_PER_ROUND = 32  # executions timed at one gap in one round


def calibration_executions(manifest: Manifest) -> list[Execution]:
    """What the device's calls are fitted on: whole models across the series' MAC range (base,
    step 1, the smallest and two between) and the input encoded as a frame."""
    whole = [v for v in manifest.variants if "output" in v.splits]
    by_macs = [v.id for v in sorted(whole, key=lambda v: v.macs)]
    picks = [manifest.base, manifest.step1_or_base, by_macs[0],
             by_macs[len(by_macs) // 3], by_macs[2 * len(by_macs) // 3]]
    unique = list(dict.fromkeys(picks))
    return [Execution("device", vid, "output") for vid in unique] + [
        Execution("frame", manifest.base, "input")]


def profiled_device_work(manifest: Manifest, edge_profile: dict,
                         executions: list[Execution]) -> dict[str, float]:
    """The edge profile's time for each execution's device work, as the cost model counts it
    (head, plus encoding for a frame)."""
    heads = {(c.variant_id, c.split): c.head_ms
             for c in candidates_from_series(manifest, edge_profile, edge_profile)}
    return {e.key: heads[(e.variant, e.split)] for e in executions}


# A slowdown must stay positive (the profile is scaled by it, the router refuses 0).
MIN_DEVICE_FACTOR = 1e-3


def fit_device(profiled: dict[str, float], measured: dict[str, float]) -> dict:
    """`device_factor` and `device_overhead_ms` (both >= 0) of the least-squares line
    measured = factor x profiled + overhead over the executions both name."""
    keys = [k for k in profiled if k in measured]
    if not keys:
        raise ValueError("no device calls to fit the device on")
    x = np.array([profiled[k] for k in keys])
    y = np.array([measured[k] for k in keys])
    if len(keys) >= 2 and np.ptp(x) > 1e-6:
        factor, overhead = np.polyfit(x, y, 1)
        if factor >= 0 and overhead >= 0:
            return {"device_factor": float(factor), "device_overhead_ms": float(overhead)}
        if factor < 0:  # the calls do not grow with the profile here: (nearly) a constant
            return {"device_factor": MIN_DEVICE_FACTOR,
                    "device_overhead_ms": float(max(0.0, np.mean(y) - MIN_DEVICE_FACTOR * np.mean(x)))}
    # through the origin (a negative intercept would make small models free)
    return {"device_factor": max(MIN_DEVICE_FACTOR, float(np.sum(x * y) / max(np.sum(x * x), 1e-12))),
            "device_overhead_ms": 0.0}


def device_model(whole_ms: list[float], edge_profile: dict, variants: tuple[str, str]) -> dict:
    """`device_factor` and `device_overhead_ms` such that the device's measured whole-model call
    is factor x profile + overhead, through the two models' points (one factor if they coincide)."""
    profiled = [edge_profile["variants"][vid]["head_ms"]["output"] for vid in variants]
    if abs(profiled[0] - profiled[1]) < 1e-3 * max(profiled):
        return {"device_factor": whole_ms[0] / profiled[0], "device_overhead_ms": 0.0}
    factor = (whole_ms[0] - whole_ms[1]) / (profiled[0] - profiled[1])
    overhead = whole_ms[0] - factor * profiled[0]
    if factor <= 0 or overhead < 0:  # noise: fall back to one factor through the larger model
        return {"device_factor": whole_ms[0] / profiled[0], "device_overhead_ms": 0.0}
    return {"device_factor": factor, "device_overhead_ms": overhead}
