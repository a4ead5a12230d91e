"""What a head and a tail replica share: loading a variant (its faults kept for /v1/health),
an error as a result entry, the replica's health, how many variants one replica holds."""

import asyncio

from pipeline.runtime import DEFAULT_RUNTIME
from pipeline.series import SeriesError
from serve.runner import VariantRunner
from serve.series_source import SeriesMirror

MAX_MODELS_PER_REPLICA = 16


def error_entry(err: Exception) -> dict:
    """An error as a result entry: 404 for an unknown variant, 500 for a series that cannot be
    read (a server fault, e.g. a weights file that fails its sha256), 400 for bad input."""
    if isinstance(err, SeriesError):
        status = 404 if "unknown variant" in str(err) else 500
    else:
        status = 400
    return {"error": str(err), "status": status}


async def load_runner(series: SeriesMirror, variant_id: str, max_batch: int,
                      faults: dict[str, str], runtime: str = DEFAULT_RUNTIME,
                      threads: int = 1) -> VariantRunner:
    """Load a variant for a head or tail replica (off the event loop), keeping `faults`: a
    variant whose files fail their checks is listed there until it loads again."""
    try:
        runner = await asyncio.to_thread(VariantRunner.load, series, variant_id, max_batch,
                                         runtime, threads)
    except SeriesError as err:
        if "unknown variant" not in str(err):
            faults[variant_id] = str(err)
        raise
    faults.pop(variant_id, None)  # a file fixed since is served again: healthy
    return runner


def replica_health(series: SeriesMirror, faults: dict[str, str]) -> dict:
    import ray

    return {"node": series.node, "node_id": ray.get_runtime_context().get_node_id(),
            "series": series.source, "fetches": series.fetches[-16:], "faults": dict(faults)}
