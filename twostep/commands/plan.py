"""`twostep plan`: the best (variant, split) of a series for a bandwidth and a constraint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from pipeline.config import Bandwidth, ConfigModel, build_config
from pipeline.cost import Link
from pipeline.profile_paths import device_profile_of, series_edge_profile
from pipeline.profiler import derive_profile, load_profile
from pipeline.selection import (
    Decision,
    baseline_candidates,
    candidates_from_series,
    ranked_rows,
    select,
)
from pipeline.series import SeriesStore
from twostep.config_flags import add_config_flags, flag_values
from twostep.table import table_lines


class PlanOptions(ConfigModel):
    """`twostep plan SERIES`: the link and the constraint to plan for, and where the profiles are."""

    bandwidth: Bandwidth = Field(description="link rate: bits/s (2.5e6) or 250kbit, 1mbit, 1gbit")
    rtt_ms: float = Field(0.0, ge=0.0, le=1e6, description="round-trip time in ms")
    accuracy_floor: float | None = Field(None, ge=0.0, le=1.0, description="lowest test accuracy, "
                                         "a fraction (0.9 = 90%); this or latency_budget_ms")
    latency_budget_ms: float | None = Field(None, ge=0.0, le=1e9, description="end-to-end latency "
                                            "limit in ms; this or accuracy_floor")
    edge_profile: str | None = Field(None, description="edge profile file; none: <series>/profile.json")
    device_profile: str | None = Field(None, description="device profile file; none: <edge "
                                       "profile>.device.json where present")
    slowdown: float | None = Field(None, gt=0.0, le=1e6, description="model the device as this "
                                   "many times slower than the edge (instead of a device profile)")
    bytes: Literal["mean", "p95"] = Field("mean", description="statistic of the measured bytes sent")
    baselines: bool = Field(True, description="raw-input and all-on-device candidates besides the "
                            "series' splits (--no-baselines: the splits only)")
    jpeg_bytes: float | None = Field(None, gt=0.0, le=1e9, description="mean size of a JPEG input "
                                     "(adds jpeg-input candidates)")
    top: int = Field(10, ge=1, le=100_000, description="rows of the table")

    @model_validator(mode="after")
    def _one_constraint_one_device(self) -> PlanOptions:
        if (self.accuracy_floor is None) == (self.latency_budget_ms is None):
            raise ValueError("give --accuracy-floor or --latency-budget-ms (one of them)")
        if self.device_profile is not None and self.slowdown is not None:
            raise ValueError("give --device-profile or --slowdown, not both")
        return self


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("series", help="a series directory (or its manifest.json)")
    add_config_flags(parser.add_argument_group("the plan (PlanOptions; docs/config.md)"), PlanOptions)
    parser.add_argument("--json", action="store_true", help="print the decision as JSON")


def options(args: argparse.Namespace) -> PlanOptions:
    return build_config(PlanOptions, flag_values(args, PlanOptions.model_fields))


def _profiles(args: PlanOptions, root: Path) -> tuple[dict, dict, str]:
    """(device profile, edge profile, a line saying where they came from)."""
    edge_path = Path(args.edge_profile) if args.edge_profile else series_edge_profile(root)
    edge = load_profile(edge_path)
    if args.slowdown is not None:
        return derive_profile(edge, args.slowdown), edge, f"device = {args.slowdown:g} x edge"
    device_path = Path(args.device_profile or device_profile_of(edge_path))
    if not args.device_profile and not device_path.is_file():
        raise ValueError(
            f"no device profile at {device_path}: pass --device-profile FILE or --slowdown X"
        )
    return load_profile(device_path), edge, f"device profile {device_path}"


def _print_table(decision: Decision) -> None:
    rows = ranked_rows(decision.ranked)
    header = ("#", "variant", "split", "strategy", "accuracy", "bytes",
              "device_ms", "transfer_ms", "edge_ms", "total_ms")
    cells = [
        (str(r["rank"]), r["variant"], r["split"], r["strategy"], f"{r['accuracy']:.4f}",
         f"{r['bytes']:,.0f}", *(f"{r[k]:.3f}" for k in header[6:]))
        for r in rows
    ]
    print("\n".join(table_lines(header, cells, left_columns=4)))


def run(cli: argparse.Namespace) -> int:
    args = options(cli)
    link = Link(args.bandwidth, args.rtt_ms)
    store = SeriesStore.open(cli.series)
    root, manifest = store.directory, store.manifest
    device, edge, source = _profiles(args, root)
    candidates = candidates_from_series(manifest, device, edge, args.bytes)
    if args.baselines:
        candidates += baseline_candidates(manifest, device, edge, args.jpeg_bytes)
    decision = select(candidates, link, args.accuracy_floor, args.latency_budget_ms, args.top)
    if cli.json:
        ranked = ranked_rows(decision.ranked)
        print(json.dumps({"bandwidth_bps": link.bandwidth_bps, "rtt_ms": link.rtt_ms,
                          "accuracy_floor": args.accuracy_floor,
                          "latency_budget_ms": args.latency_budget_ms,
                          "best": ranked[0], "ranked": ranked}, indent=1))
        return 0
    constraint = (
        f"accuracy >= {args.accuracy_floor:g}" if args.accuracy_floor is not None
        else f"latency <= {args.latency_budget_ms:g} ms"
    )
    best, b = decision.best, decision.breakdown
    print(f"link {link.bandwidth_bps:,.0f} bit/s, RTT {link.rtt_ms:g} ms; {constraint}; "
          f"{len(candidates)} candidates; {source}")
    print(f"best: {best.label}, accuracy {best.accuracy:.4f}, {best.bytes_sent:,.0f} bytes: "
          f"{b.total_ms:.3f} ms = device {b.device_ms:.3f} + transfer {b.transfer_ms:.3f} "
          f"+ edge {b.edge_ms:.3f}")
    _print_table(decision)
    return 0
