"""`twostep prune --ray`: step 1 as a Ray Tune trial, then one step-2 trial per pruned layer.

The driver (this module) measures the base model, runs step 1 as one trial (or a grid of
trials when a step-1 search is asked for), then fans out step 2 as one trial per pruned layer,
in parallel as far as the per-trial resources allow. Every checkpoint a trial reports becomes a
variant of the series as it arrives (`SeriesCollector`); the driver is the only writer, and the
final manifest is the in-process one (same ids, widths, entries, order).

Resuming is driven by the store: rerunning the same command skips a finished step 1 and every
complete step-2 ladder, and starts a partial ladder after its last recorded variant. Within a
run, a trial whose worker dies is restarted by Tune (`FailureConfig.max_failures`) from its last
checkpoint. Tune's own files (params, progress.csv, result.json, TensorBoard events,
checkpoints) go to `<out>/tune/<phase>-<time>/<trial>/` unless another storage path is given;
one JSON line per phase is appended to `<out>/tune_runs.jsonl`.

On a cluster, trials may run on nodes that cannot see the driver's disk: the data, the start
models and the distillation teacher travel through the object store, and the storage path (a
shared directory or a `pyarrow.fs` URI) is checked from every alive node before any trial
starts (`tune.storage.check_storage`). The series store stays on the driver.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path

import ray
from ray import tune

from pipeline.config import PruneConfig
from pipeline.data import splits_to_arrays
from pipeline.prune_job import Log, prepare, step2_layers, time_step1_calls
from pipeline.series import SeriesError, SeriesStore, Variant, is_series
from tune.callbacks import LiveTable, SeriesCollector
from tune.collect import VariantSink, append_run_log, copy_variants, sort_variants
from tune.plan import (
    Step1Search,
    TrialResources,
    choose_step1,
    config_dict,
    step1_entries,
    step1_finished,
    step1_job,
    step2_jobs,
    variant_order,
)
from tune.storage import check_storage, resolve_storage
from tune.trainables import step1_trainable, step2_trainable

RUN_LOG = "tune_runs.jsonl"
SEARCH_DIR = "search"


class TrialsFailedError(RuntimeError):
    """Trials failed for good (after Tune's retries); the series keeps what was collected."""


def init_ray(address: str | None = None) -> bool:
    """Make sure Ray is initialised; returns whether this call started it.

    Args:
        address: None or "local" starts a local session sized to this machine (no dashboard);
            "auto" or "HOST:PORT" joins an existing cluster. An already initialised session
            (e.g. a test fixture) is reused as it is.
    """
    if address and address.startswith("ray://"):
        raise ValueError(f"Ray Client addresses ({address}) are not supported: the driver writes "
                         "the series on its own machine, so run the command on the cluster "
                         "(`ray job submit ... -- twostep prune --ray auto ...`)")
    if ray.is_initialized():
        return False
    if address in (None, "", "local"):
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    return True


def _check_resources(resources: TrialResources, joined: bool, log: Log) -> None:
    """Refuse (local session) or warn about (cluster: the autoscaler may add nodes) a per-trial
    request no node of the session can hold."""
    total = ray.cluster_resources()
    wanted = {"CPU": resources.cpus, "GPU": resources.gpus, **resources.custom}
    missing = {k: v for k, v in wanted.items() if v > total.get(k, 0)}
    if not missing:
        return
    text = ", ".join(f"{k} {v:g} (session has {total.get(k, 0):g})" for k, v in missing.items())
    if not joined:
        raise ValueError(f"a trial asks for more than this Ray session holds: {text}")
    log(f"warning: no node holds {text} yet; trials wait until the autoscaler adds one")


@dataclasses.dataclass
class _Launcher:
    config: PruneConfig
    store: SeriesStore
    resources: TrialResources
    max_concurrent: int
    storage_path: str
    max_failures: int
    progress: bool
    log: Log
    inject_failure: dict | None
    data: dict = dataclasses.field(default_factory=dict)

    @property
    def base(self) -> Variant:
        return self.store.manifest.base_variant

    # ---- one Tune run ----
    def fit(self, phase: str, trainable, jobs: list[dict], sinks: dict[str, VariantSink],
            blobs: dict[str, bytes], totals: dict[str, int]) -> dict[str, dict]:
        """Run `jobs` as trials of one Tuner; returns per-trial facts (also in the run log)."""
        if self.inject_failure:
            for job in jobs:
                if job["key"] == self.inject_failure["key"]:
                    job["fail_once"] = {k: self.inject_failure[k] for k in ("marker", "after_iteration")}
        if self.config.distill_weight > 0:
            base = self.base
            blobs = {**blobs, base.sha256: self.store.weights_path(base.id).read_bytes()}
            for job in jobs:
                job["teacher"] = base.sha256
        collector = SeriesCollector(sinks)
        callbacks = [collector, LiveTable(jobs, totals, enabled=self.progress)]
        name = f"{phase}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(trainable, start_blobs=blobs, data=self.data),
                                self.resources.to_ray()),
            param_space={"prune": config_dict(self.config), "job": tune.grid_search(jobs)},
            tune_config=tune.TuneConfig(max_concurrent_trials=self.max_concurrent or None,
                                        reuse_actors=True,
                                        trial_name_creator=_trial_name,
                                        trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(
                name=name, storage_path=self.storage_path, verbose=0, callbacks=callbacks,
                failure_config=tune.FailureConfig(max_failures=self.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            ),
        )
        self.log(f"{phase}: {len(jobs)} trial(s) ({', '.join(j['key'] for j in jobs)}), "
                 f"{self.resources.to_ray()} each; logs in {self.storage_path}/{name}")
        started = time.perf_counter()
        with _quiet_tune():
            grid = tuner.fit()
        wall_s = time.perf_counter() - started
        trials = {}
        for result in grid:
            key = result.config["job"]["key"]
            trials[key] = {
                "error": None if result.error is None else f"{type(result.error).__name__}: {result.error}",
                "failures": collector.failures[key], "iterations": collector.iterations[key],
                "collected": sinks[key].added, "path": result.path,
                "time_total_s": (result.metrics or {}).get("time_total_s"),
            }
        append_run_log(Path(self.config.out) / RUN_LOG, {
            "phase": phase, "experiment": name, "storage_path": self.storage_path,
            "wall_s": wall_s, "resources": self.resources.to_ray(),
            "max_concurrent": self.max_concurrent, "trials": trials,
        })
        failed = {k: t["error"] for k, t in trials.items() if t["error"]}
        failed.update({j["key"]: "did not finish" for j in jobs
                       if j["key"] not in collector.completed and j["key"] not in failed})
        failed.update({k: f"collection failed: {e}" for k, e in collector.errors.items()})
        if failed:
            lines = "\n".join(f"  {k}: {e.splitlines()[0] if e else e}" for k, e in failed.items())
            raise TrialsFailedError(f"{len(failed)} trial(s) of {phase} failed:\n{lines}\n"
                                    f"{self.config.out} holds every variant collected so far; "
                                    "rerun the same command to resume")
        return trials

    # ---- step 1 ----
    def step1(self) -> None:
        store, base = self.store, self.base
        entries = step1_entries(store)
        if not step1_finished(entries, base, self.config):
            job = step1_job("step1", store, base, entries, self.resources.threads,
                            layer_model=store.manifest.step1_layer_model)
            sinks = {"step1": VariantSink(store, 1, None, job["start"]["iteration"] + 1)}
            blobs = {job["start"]["sha256"]: store.weights_path(job["start"]["variant"]).read_bytes()}
            self.fit("step1", step1_trainable, [job], sinks, blobs,
                     {"step1": self.config.step1_max_iterations})
            entries = step1_entries(store)
        self._keep_step1(entries)

    def _keep_step1(self, entries: list[Variant]) -> None:
        if not entries:
            self.log("step 1 kept no iteration (the first already broke the budget); "
                     "step 2 starts from the base model")
        kept = entries[-1] if entries else self.base
        self.store.set_field("step1", kept.id)
        self.log(f"step 1 keeps {kept.id} ({self.base.macs / kept.macs:.2f}x fewer MACs, "
                 f"val acc {kept.val_accuracy:.4f})")

    def search_step1(self, search: Step1Search) -> None:
        """One step-1 trial per candidate, each into its own store under `<out>/search/`; the
        winner's variants are then copied into the series."""
        store, base, config = self.store, self.base, self.config
        candidates = search.candidates(config)
        stores, jobs, sinks, blobs = {}, [], {}, {}
        for key, overrides in candidates.items():
            cstore = stores[key] = self._candidate_store(key, overrides)
            if cstore.manifest.step1 is not None:
                continue
            entries = step1_entries(cstore)
            if step1_finished(entries, base, config.replace(**overrides)):
                continue
            job = step1_job(key, cstore, base, entries, self.resources.threads, overrides,
                            store.manifest.step1_layer_model)
            source = cstore if entries else store
            blobs[job["start"]["sha256"]] = source.weights_path(job["start"]["variant"]).read_bytes()
            sinks[key] = VariantSink(cstore, 1, None, job["start"]["iteration"] + 1)
            jobs.append(job)
        if jobs:
            totals = {j["key"]: config.step1_max_iterations for j in jobs}
            self.fit("step1-search", step1_trainable, jobs, sinks, blobs, totals)
        kept = {}
        for key, cstore in stores.items():
            entries = step1_entries(cstore)
            kept[key] = entries[-1] if entries else base
            if cstore.manifest.step1 is None:
                cstore.set_field("step1", kept[key].id)
        winner = choose_step1(kept, base.val_accuracy, config, search.metric)
        self.log(f"step-1 search ({search.metric}): {winner} wins")
        copy_variants(stores[winner], store, [e.id for e in step1_entries(stores[winner])])
        store.set_field("step1_search", {
            "metric": search.metric, "chosen": winner, "overrides": candidates[winner],
            "candidates": {k: {"overrides": candidates[k], "kept": v.id,
                               "val_accuracy": v.val_accuracy, "macs": v.macs}
                           for k, v in kept.items()},
        })
        self._keep_step1(step1_entries(store))

    def _candidate_store(self, key: str, overrides: dict) -> SeriesStore:
        directory = Path(self.config.out) / SEARCH_DIR / key
        if is_series(directory):
            return SeriesStore.open(directory)
        m = self.store.manifest
        return SeriesStore.create(directory, m.base_arch, m.data, m.codec,
                                  config_dict(self.config.replace(**overrides)))

    # ---- step 2 ----
    def step2(self) -> None:
        store = self.store
        step1 = store.manifest.step1_variant
        layers = step2_layers(step1.arch_spec, self.config)
        jobs = step2_jobs(store, step1, layers, self.config, self.resources.threads)
        complete = [layer for layer in layers if f"step2-{layer}" not in {j["key"] for j in jobs}]
        if complete:
            self.log(f"step 2: {len(complete)} layer(s) already complete: {', '.join(complete)}")
        if not jobs:
            return
        sinks = {j["key"]: VariantSink(store, 2, j["layer"], j["start"]["iteration"] + 1)
                 for j in jobs}
        blobs = {j["start"]["sha256"]: store.weights_path(j["start"]["variant"]).read_bytes()
                 for j in jobs}
        self.fit("step2", step2_trainable, jobs, sinks, blobs,
                 {j["key"]: len(j["ladder"]) for j in jobs})


@contextlib.contextmanager
def _quiet_tune():
    """Tune's console output and signal handling off for one run.

    Its newer output engine prints an experiment banner at any verbosity; the classic one takes
    our LiveTable as its trial printer. With `num_to_keep` set, every checkpoint forces an
    experiment snapshot, which is cheap here but warns. Tune's SIGINT handler would end the run
    quietly as if it had finished; without it Ctrl-C raises KeyboardInterrupt, and the store
    (not Tune's experiment state) is what the next run resumes from.
    """
    settings = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_SIGINT_HANDLER": "1",
                "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
    previous = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    tune_logger = logging.getLogger("ray.tune")
    level = tune_logger.level
    tune_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        tune_logger.setLevel(level)
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _trial_name(trial) -> str:
    return trial.config["job"]["key"]


def launch_pruning(
    config: PruneConfig, steps: str = "both", address: str | None = None, progress: bool = True,
    *, resources: TrialResources | None = None, max_concurrent: int = 0,
    search: Step1Search | None = None, storage_path: str | os.PathLike | None = None,
    max_failures: int = 3, log: Log = print, inject_failure: dict | None = None,
) -> SeriesStore:
    """2-step pruning on Ray Tune into the series at `config.out` (created or resumed).

    Args:
        steps: "1", "2" (needs a finished step 1) or "both".
        address: see `init_ray`; a session started here is shut down at the end.
        progress: print a live table of the trials.
        resources: what each trial reserves (default 1 CPU).
        max_concurrent: at most this many trials at once (0: as many as resources allow).
        search: a grid of step-1 settings to try (off by default).
        storage_path: Tune's run directory (default `<out>/tune`; on a multi-node cluster a
            shared file system or bucket, e.g. s3://bucket/twostep), checked from every node.
        max_failures: restarts of a trial whose worker dies, each from its last checkpoint.
        inject_failure: test hook, {"key": trial key, "after_iteration": n, "marker": path}:
            that trial's worker exits with os._exit right after reporting iteration n, once.
    """
    if steps not in ("1", "2", "both"):
        raise ValueError(f"steps must be 1, 2 or both, got {steps!r}")
    if search is not None and config.step1_continue_from:
        raise ValueError("a step-1 search starts every candidate from the base; it cannot go on from "
                         f"step1_continue_from ({config.step1_continue_from}): drop one of the two")
    if max_concurrent < 0 or max_failures < 0:
        raise ValueError("max_concurrent and max_failures must be >= 0")
    resources = resources or TrialResources()
    started = init_ray(address)
    try:
        _check_resources(resources, joined=address not in (None, "", "local"), log=log)
        storage = resolve_storage(str(storage_path or Path(config.out) / "tune"))
        nodes = check_storage(storage)
        if len(nodes) > 1:
            log(f"Tune storage {storage} checked from {len(nodes)} nodes")
        store, ctx, _, base_spec = prepare(config, log)
        if steps != "1":
            step2_layers(base_spec, config)  # a bad split name fails now, not after step 1
        if steps == "2" and store.manifest.step1 is None:
            raise SeriesError(f"{config.out} has no finished step 1; run --step 1 (or both) first")
        launcher = _Launcher(config, store, resources, max_concurrent, storage, max_failures,
                             progress, log, inject_failure, splits_to_arrays(ctx.splits))
        if store.manifest.step1 is None:
            if search is not None:
                launcher.search_step1(search)
            else:
                launcher.step1()
        time_step1_calls(store, config, log)
        if steps != "1":
            launcher.step2()
        sort_variants(store, variant_order(base_spec))
        return store
    finally:
        if started:
            ray.shutdown()
