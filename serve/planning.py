"""What a Router answers about choices: the constraint of a request, a forced (variant, split)
checked, `/v1/plan` and `/v1/plan/table` from the planner, and the series' listing."""

import logging
from collections import OrderedDict

from pipeline.cost import Link
from pipeline.runtime import profile_runtime
from pipeline.selection import Candidate, ranked_rows
from pipeline.series import Manifest
from serve.inputs import HttpError
from serve.plan_table import plan_table as build_plan_table
from serve.planner import Planner
from serve.profiles import resolve_profiles
from serve.queries import ConstraintQuery, PlanQuery, PlanTableQuery, check_variant
from serve.series_source import SeriesMirror
from serve.settings import AppArgs

logger = logging.getLogger("ray.serve")
PLAN_TABLE_CACHE = 64


class Plans:
    """The planner of one Router replica and the answers built from it."""

    def __init__(self, planner: Planner, args: AppArgs, series_sha256: str):
        self.planner, self.args, self.series_sha256 = planner, args, series_sha256
        self.default_floor, self.default_budget = args.accuracy_floor, args.latency_budget_ms
        if self.default_floor is None and self.default_budget is None:
            self.default_floor = max(0.0, planner.best_accuracy - args.accuracy_drop)
        self._tables: OrderedDict[tuple, list[dict]] = OrderedDict()

    def constraint(self, query: ConstraintQuery) -> tuple[float | None, float | None]:
        """(accuracy_floor, latency_budget_ms) of a request, else the server's defaults."""
        if query.accuracy_floor is None and query.latency_budget_ms is None:
            return self.default_floor, self.default_budget
        return query.accuracy_floor, query.latency_budget_ms

    def previous(self, choice: tuple[str, str] | list | None) -> Candidate | None:
        """The candidate in force for a planning key (None if none, or no longer served)."""
        if choice is None:
            return None
        try:
            return self.planner.candidate(*choice)
        except (KeyError, ValueError):
            return None

    def variant(self, variant_id: str | None) -> str:
        return check_variant(variant_id, self.planner.variants.__contains__)

    def split(self, variant_id: str, split: str | None) -> str:
        splits = self.planner.splits_of(variant_id)
        if split not in splits:
            raise HttpError(400, f"variant {variant_id!r} is served at splits {', '.join(splits)}; "
                                 f"got {split!r}")
        return split

    def device_times(self, document: object) -> dict:
        """The device's measured head times of a `POST /v1/plan[/table]` body; 400 if malformed."""
        if not isinstance(document, dict) or set(document) != {"device_ms"}:
            raise HttpError(400, 'body must be {"device_ms": {"VARIANT": {"SPLIT": ms}}}')
        try:
            return self.planner.device_times(document["device_ms"])
        except ValueError as err:
            raise HttpError(400, str(err)) from None

    def plan(self, query: PlanQuery, link: Link, source: str, device_ms: dict | None) -> dict:
        """`/v1/plan`: the ranked choices over `link` (its bandwidth `given` or the `estimate`)."""
        floor, budget = self.constraint(query)
        slowdown, overhead = query.device_slowdown, query.device_overhead_ms
        decision = self.planner.plan(link, floor, budget, query.top, device_slowdown=slowdown,
                                     frames_only=query.frames_only,
                                     device_overhead_ms=overhead, device_ms=device_ms)
        ranked = ranked_rows(decision.ranked)
        return {"bandwidth_bps": link.bandwidth_bps, "rtt_ms": link.rtt_ms, "bandwidth_source": source,
                "device_slowdown": slowdown, "device_overhead_ms": overhead,
                "device_times": len(device_ms or ()),
                "accuracy_floor": floor, "latency_budget_ms": budget, "best": ranked[0],
                "ranked": ranked}

    def plan_table(self, query: PlanTableQuery, rtt: float, device_ms: dict | None) -> dict:
        """`/v1/plan/table`: the best choice over all bandwidths for one constraint and device."""
        floor, budget = self.constraint(query)
        slowdown, overhead = query.device_slowdown, query.device_overhead_ms
        table = self.planner.table_for(slowdown, overhead, query.frames_only, device_ms)

        def best_at(link: Link) -> Candidate:
            return table.select(link, floor, budget, 1).best

        # a table costs a few hundred plans: cache the recent ones, so that many devices with
        # the same constraint (or one asking again) cost nothing
        key = (floor, budget, rtt, slowdown, overhead, query.frames_only,
               frozenset((device_ms or {}).items()))
        rows = self._tables.pop(key, None)
        if rows is None:
            rows = build_plan_table(best_at, rtt)
        self._tables[key] = rows
        while len(self._tables) > PLAN_TABLE_CACHE:
            self._tables.popitem(last=False)
        return {"accuracy_floor": floor, "latency_budget_ms": budget, "rtt_ms": rtt,
                "device_slowdown": slowdown, "device_overhead_ms": overhead,
                "device_times": len(device_ms or ()),
                "frames_only": query.frames_only, "switch_margin": self.args.switch_margin,
                "series": self.series_sha256, "rows": rows}

    def listing(self, manifest: Manifest) -> dict:
        """`/v1/variants`: every served variant, its accuracy, size and the splits it is served at."""
        listed = []
        for vid, entry in self.planner.variants.items():
            listed.append({
                "id": vid, "step": entry.step, "layer": entry.layer, "accuracy": entry.accuracy,
                "macs": entry.macs, "spec": entry.spec, "sha256": entry.sha256,
                "splits": self.planner.splits_of(vid),
                "bytes_mean": {s: v.bytes_mean for s, v in entry.splits.items()},
            })
        return {"base": manifest.base, "data": manifest.data, "codec": manifest.codec,
                "variants": listed}


def build_planner(series: SeriesMirror, args: AppArgs, profile_docs: dict | None) -> tuple[Planner, str]:
    """The planner of the served series with its device and edge profiles (given, found beside
    the series, or estimated from MACs), and a line saying where the profiles came from."""
    manifest = series.store.manifest
    docs = profile_docs or {}
    base = manifest.base or series.store.ids()[0]
    profiles = resolve_profiles(
        series.store.directory, manifest, docs.get("edge"), docs.get("device"),
        args.slowdown, args.ms_per_mmac, args.layer_ms,
        calibration_model=None if args.ms_per_mmac is not None else series.load_model(base)[:2],
        runtime=args.runtime,
    )
    source = profiles.source
    profiled = profile_runtime(profiles.edge)
    if "estimated" not in profiles.edge and profiled != args.runtime:
        source += (f"; WARNING: profiled with {profiled}, served with {args.runtime} (rerun "
                   f"twostep profile --runtime {args.runtime}): planned times are off")
        logger.warning(source)
    planner = Planner(manifest, profiles.device, profiles.edge, args.bytes_stat, args.baselines,
                      args.switch_margin)
    return planner, source
