"""`twostep prune`: 2-step pruning of a base checkpoint into a model series."""

from __future__ import annotations

import argparse
import sys

from pipeline.config import PruneConfig, make_config
from twostep.config_flags import add_config_flags, flag_values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML file with the keys below, or its [prune] section "
                        "(configs/demo.toml); flags override it. Keys: docs/config.md")
    parser.add_argument("--step", choices=("1", "2", "both"), default="both",
                        help="which step(s) to run (default both; 2 needs a finished step 1)")
    add_config_flags(parser.add_argument_group("pruning (PruneConfig; TOML keys use _)"),
                     PruneConfig)
    parser.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                        help="run on Ray Tune: no value starts a local Ray session, "
                             "'auto' or HOST:PORT joins a cluster")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--resume", action="store_true",
                        help="require an existing series at --out and resume it (the same "
                             "command without --resume resumes too, or starts a new series)")
    ray = parser.add_argument_group("Ray Tune (with --ray)")
    ray.add_argument("--cpus-per-trial", type=float, default=1.0,
                     help="CPUs each trial reserves; torch uses that many threads (default 1)")
    ray.add_argument("--gpus-per-trial", type=float, default=0.0,
                     help="GPUs each trial reserves; a fraction below 1 shares a GPU (default 0)")
    ray.add_argument("--trial-resource", action="append", default=[], metavar="NAME=AMOUNT",
                     help="a custom Ray resource each trial reserves as well (repeatable), e.g. "
                          "prune=0.25 to run only on cluster.yaml's prune_gpu nodes")
    ray.add_argument("--max-concurrent", type=int, default=0,
                     help="at most this many trials at once (default: as resources allow)")
    ray.add_argument("--max-failures", type=int, default=3,
                     help="restarts of a trial whose worker dies, each from its last checkpoint")
    ray.add_argument("--storage-path",
                     help="Tune's run directory (default OUT/tune; shared storage such as "
                          "s3://bucket/path on a multi-node cluster)")
    ray.add_argument("--search-divisors",
                     help="step-1 search: comma-separated step1_divisor values to try")
    ray.add_argument("--search-budgets",
                     help="step-1 search: comma-separated step1_budget values to try")
    ray.add_argument("--search-metric", choices=("macs", "val_accuracy"), default="macs",
                     help="how the search picks step 1: fewest MACs within the configured "
                          "budget (default), or the highest validation accuracy")


def config_from_args(args: argparse.Namespace) -> PruneConfig:
    return make_config(PruneConfig, args.config, "prune",
                       **flag_values(args, PruneConfig.model_fields))


def _numbers(text: str | None, kind: type, flag: str) -> tuple:
    if not text:
        return ()
    try:
        return tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated numbers, got {text!r}") from None


TUNE_RESERVED = ("cpu", "gpu", "memory", "custom_resources")  # keys tune.with_resources reads


def trial_resources(entries: list[str]) -> dict[str, float]:
    """`--trial-resource NAME=AMOUNT` entries as the dict Ray takes."""
    custom: dict[str, float] = {}
    for entry in entries:
        name, sep, amount = entry.partition("=")
        try:
            value = float(amount)
        except ValueError:
            value = None
        name = name.strip()
        if not sep or not name or value is None or not value > 0:
            raise ValueError(f"--trial-resource takes NAME=AMOUNT with AMOUNT > 0 (e.g. prune=0.25), "
                             f"got {entry!r}")
        if name in custom:
            raise ValueError(f"--trial-resource {name} given twice")
        if name.lower() in TUNE_RESERVED:
            raise ValueError(f"--trial-resource {name}: Tune reads that name itself; "
                             f"use --cpus-per-trial/--gpus-per-trial or another name")
        custom[name] = value
    return custom


def _ray_flags_used(args: argparse.Namespace) -> list[str]:
    defaults = {"cpus_per_trial": 1.0, "gpus_per_trial": 0.0, "trial_resource": [], "max_concurrent": 0,
                "max_failures": 3, "storage_path": None, "search_divisors": None,
                "search_budgets": None, "search_metric": "macs"}
    return ["--" + k.replace("_", "-") for k, v in defaults.items() if getattr(args, k) != v]


def run(args: argparse.Namespace) -> int:
    from pipeline.report import format_series_table
    from pipeline.series import is_series

    config = config_from_args(args)
    if args.resume and not is_series(config.out):
        raise ValueError(f"--resume: no series at {config.out} to resume")
    if args.ray is None and _ray_flags_used(args):
        raise ValueError(f"{', '.join(_ray_flags_used(args))} only apply with --ray")
    if args.ray is not None:
        from tune.launch import TrialsFailedError, launch_pruning
        from twostep.ray_env import apply_ray_env

        apply_ray_env()
        from tune.plan import Step1Search, TrialResources
        from tune.storage import StorageError

        search = None
        divisors = _numbers(args.search_divisors, int, "--search-divisors")
        budgets = _numbers(args.search_budgets, float, "--search-budgets")
        if divisors or budgets:
            search = Step1Search(divisors, budgets, args.search_metric)
        try:
            store = launch_pruning(
                config, steps=args.step, address=args.ray, progress=not args.quiet,
                resources=TrialResources(cpus=args.cpus_per_trial, gpus=args.gpus_per_trial,
                                         custom=trial_resources(args.trial_resource)),
                max_concurrent=args.max_concurrent, max_failures=args.max_failures,
                storage_path=args.storage_path, search=search)
        except TrialsFailedError as err:
            print(f"twostep prune: {err}")
            return 1
        except StorageError as err:
            print(f"twostep prune: error: {err}", file=sys.stderr)
            return 1
    else:
        from pipeline.prune_job import prune_series

        store = prune_series(config, steps=args.step, progress=not args.quiet)
    print(format_series_table(store.manifest, config.step1_budget))
    print(f"series written to {config.out}")
    return 0
