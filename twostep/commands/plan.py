"""`twostep plan`: the best (variant, split) of a series for a bandwidth and a constraint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.cost import Link, parse_bandwidth
from pipeline.profile_paths import device_profile_of, series_edge_profile
from pipeline.profiler import derive_profile, load_profile
from pipeline.selection import (
    BYTE_STATS,
    Decision,
    baseline_candidates,
    candidates_from_series,
    ranked_rows,
    select,
)
from pipeline.series import SeriesStore


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("series", help="a series directory (or its manifest.json)")
    parser.add_argument(
        "--bandwidth", required=True, help="link rate: bits/s (2.5e6) or 250kbit, 1mbit, 1gbit"
    )
    parser.add_argument("--rtt-ms", type=float, default=0.0, help="round-trip time (default 0)")
    constraint = parser.add_mutually_exclusive_group(required=True)
    constraint.add_argument(
        "--accuracy-floor", type=float, help="lowest test accuracy, a fraction (0.9 = 90%%)"
    )
    constraint.add_argument("--latency-budget-ms", type=float, help="end-to-end latency limit")
    parser.add_argument("--edge-profile", help="edge profile (default: <series>/profile.json)")
    parser.add_argument(
        "--device-profile", help="device profile (default: <edge profile>.device.json if present)"
    )
    parser.add_argument(
        "--slowdown", type=float, help="model the device as this many times slower than the edge"
    )
    parser.add_argument("--bytes", choices=sorted(BYTE_STATS), default="mean",
                        help="statistic of the measured bytes sent (default mean)")
    parser.add_argument("--no-baselines", action="store_true",
                        help="leave out raw-input and all-on-device candidates")
    parser.add_argument("--jpeg-bytes", type=float,
                        help="mean size of a JPEG input (adds jpeg-input candidates)")
    parser.add_argument("--top", type=int, default=10, help="rows of the table (default 10)")
    parser.add_argument("--json", action="store_true", help="print the decision as JSON")


def _profiles(args: argparse.Namespace, root: Path) -> tuple[dict, dict, str]:
    """(device profile, edge profile, a line saying where they came from)."""
    edge_path = Path(args.edge_profile) if args.edge_profile else series_edge_profile(root)
    edge = load_profile(edge_path)
    if args.device_profile and args.slowdown is not None:
        raise ValueError("give --device-profile or --slowdown, not both")
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
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    for line in (header, *cells):
        print("  ".join(
            cell.ljust(w) if i < 4 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ))


def run(args: argparse.Namespace) -> int:
    link = Link(parse_bandwidth(args.bandwidth), args.rtt_ms)
    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    store = SeriesStore.open(args.series)
    root, manifest = store.directory, store.manifest
    device, edge, source = _profiles(args, root)
    candidates = candidates_from_series(manifest, device, edge, args.bytes)
    if not args.no_baselines:
        candidates += baseline_candidates(manifest, device, edge, args.jpeg_bytes)
    decision = select(candidates, link, args.accuracy_floor, args.latency_budget_ms, args.top)
    if args.json:
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
