"""Step 1 carried further than a finished series took it, in a series of its own.

A series whose step 1 stopped at its MAC target (or its last allowed iteration) holds every
iteration up to there. `step1_continue_from = "DIR"` starts a new series at `out` from those
iterations - the base and each step-1 variant copied, weights checked by their sha256 - and step
1 goes on from the last one towards this config's larger target; step 2 then runs on the new
kept model. The source series is only read. Everything that made the copied iterations (the base,
the data, the schedule, the criterion) must be as in the source; only how far step 1 goes, step
2's settings and where it runs may differ. The source's last iteration stopped where its target
clipped it (fewer filters than a whole iteration): the new series is that run carried on, not
the run a larger target would have made from the start.

The new manifest records the source under `step1_continued_from`:
    {"series": DIR, "variants": [ids copied], "kept": the source's step-1 model,
     "mac_reduction": what the source reached}
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from pipeline.config import PruneConfig
from pipeline.models.registry import ArchSpec
from pipeline.series import MANIFEST, SeriesError, SeriesStore, Variant

FIELD = "step1_continued_from"
# Keys that say how far step 1 goes, what step 2 does and where the run goes: the rest made
# the copied iterations and must be the source's.
FREE_KEYS = {"out", "step1_continue_from", "step1_target_mac_reduction", "step1_max_iterations",
             "step1_time_calls", "threads", "device"}


def free_key(key: str) -> bool:
    return key in FREE_KEYS or key.startswith("step2_")


def source_reduction(store: SeriesStore) -> float:
    base, kept = store.manifest.base_variant, store.manifest.step1_variant
    return base.macs / kept.macs


def check_continuable(source: SeriesStore, config: PruneConfig, defaults: dict) -> Variant:
    """The source's kept step-1 variant, after checking that step 1 can go on from it under
    `config` (`defaults`: values for keys the source's config predates); SeriesError says why not."""
    where = source.directory
    manifest = source.manifest
    if manifest.base is None or manifest.step1 is None:
        raise SeriesError(f"step1_continue_from: {where} has no finished step 1 to continue")
    kept = manifest.step1_variant
    if kept.step != 1:
        raise SeriesError(f"step1_continue_from: {where} kept no step-1 iteration (its first broke "
                          "the budget): nothing to go on from")
    # a series whose step 1 was a Tune search made its iterations with the winner's settings
    search = getattr(manifest, "step1_search", None) or {}  # a key the typed manifest keeps as read
    previous = {**defaults, **manifest.config, **search.get("overrides", {})}
    current = config.model_dump(mode="json")
    changed = sorted(k for k in current if not free_key(k) and previous.get(k) != current[k])
    if changed:
        raise SeriesError(f"step1_continue_from: {where} was pruned with other "
                          + ", ".join(f"{k} ({previous.get(k)!r}, here {current[k]!r})" for k in changed)
                          + "; only how far step 1 goes, step 2 and threads/device may differ")
    reached = source_reduction(source)
    stopped_at_target = bool(previous.get("step1_target_mac_reduction")) and \
        reached >= previous["step1_target_mac_reduction"]
    if not stopped_at_target and kept.iteration < int(previous.get("step1_max_iterations", 0)):
        # its next iteration broke the budget (and was rolled back) or found every layer at its
        # minimum width: going on would run that same iteration again
        raise SeriesError(f"step1_continue_from: {where} ended step 1 at iteration {kept.iteration} "
                          f"({reached:.2f}x fewer MACs) before its MAC target and its last allowed "
                          "iteration: its next iteration was rolled back (the budget) or had nothing "
                          "left to cut, and going on would repeat it")
    target = config.step1_target_mac_reduction
    if target and target <= reached:
        raise SeriesError(f"step1_continue_from: {where} already reached {reached:.2f}x fewer MACs; "
                          f"step1_target_mac_reduction {target:g} asks for no more")
    if config.step1_max_iterations <= kept.iteration:
        raise SeriesError(f"step1_continue_from: {where} ran {kept.iteration} step-1 iterations; "
                          f"step1_max_iterations {config.step1_max_iterations} allows no more")
    return kept


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def continue_series(config: PruneConfig, base_model: torch.nn.Module, base_spec: ArchSpec,
                    defaults: dict) -> SeriesStore:
    """A new series at `config.out` holding the base and step-1 iterations of
    `config.step1_continue_from`, step 1 unfinished so that it goes on from the last of them."""
    source = SeriesStore.open(config.step1_continue_from)
    kept = check_continuable(source, config, defaults)
    manifest = source.manifest
    source_base, source_spec, _ = source.load_model(manifest.base)
    if source_spec != base_spec or not _same_weights(source_base, base_model):
        raise SeriesError(f"step1_continue_from: {source.directory}'s base is not the checkpoint "
                          f"{config.base}")
    # built aside and moved into place: a run stopped while copying leaves no half series at out
    out = Path(config.out)
    building = out.with_name(out.name + ".continuing")
    shutil.rmtree(building, ignore_errors=True)
    store = SeriesStore.create(building, base_spec, manifest.data, manifest.codec,
                               config.model_dump(mode="json"))
    copied = [manifest.base_variant, *sorted(manifest.step(1), key=lambda v: v.iteration)]
    for variant in copied:
        store.copy_variant(source, variant.id)
    store.set_field("base", manifest.base)
    if manifest.step1_layer_model is not None:
        store.set_field("step1_layer_model", manifest.step1_layer_model)
    store.set_field(FIELD, {"series": str(source.directory), "variants": [v.id for v in copied],
                            "kept": kept.id, "mac_reduction": round(source_reduction(source), 4)})
    _move_into(building, out)
    return SeriesStore.open(out)


def _move_into(building: Path, out: Path) -> None:
    """Move the series built at `building` to `out` (which may exist, e.g. holding Tune's run
    directory): the weights first, the manifest last, so `out` is a series only once complete."""
    (out / "weights").mkdir(parents=True, exist_ok=True)
    for path in (building / "weights").iterdir():
        path.replace(out / "weights" / path.name)
    (building / MANIFEST).replace(out / MANIFEST)
    shutil.rmtree(building)
