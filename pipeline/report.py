"""The paper's table for a series: per split, elements and bytes of original, step-1, step-2."""

from __future__ import annotations

from pipeline.models.registry import ArchSpec
from pipeline.series import Manifest
from pipeline.split import pruned_layer, split_points


def series_rows(manifest: Manifest, max_loss: float = 0.01) -> list[dict]:
    """One row per inner split point.

    The step-2 column shows, among the step-2 variants offering that split, the one with the
    fewest bytes whose accuracy is within `max_loss` of the base model (or the most accurate
    one if none is).
    """
    base, step1 = manifest.base_variant, manifest.step1_variant
    if base is None:
        return []
    floor = base.accuracy - max_loss
    spec = manifest.base_arch
    rows = []
    for split in split_points(spec)[1:-1]:
        orig = base.splits[split]
        row = {
            "split": split, "group": pruned_layer(spec, split), "orig_elements": orig.elements,
            "orig_float32_bytes": 4 * orig.elements, "orig_bytes": orig.bytes_mean,
        }
        if step1 is not None:
            row["s1_elements"] = step1.splits[split].elements
            row["s1_bytes"] = step1.splits[split].bytes_mean
        series = [v for v in manifest.step(2) if split in v.splits]
        if series:
            within = [v for v in series if v.accuracy >= floor]
            best = (min(within, key=lambda v: v.splits[split].bytes_mean) if within
                    else max(series, key=lambda v: v.accuracy))
            s2 = best.splits[split]
            row.update({
                "s2_id": best.id, "s2_elements": s2.elements, "s2_bytes": s2.bytes_mean,
                "s2_accuracy": best.accuracy, "s2_within_budget": bool(within),
                "element_reduction": orig.elements / s2.elements,
                "byte_reduction_vs_float32": 4 * orig.elements / s2.bytes_mean,
            })
        rows.append(row)
    return rows


def format_series_table(manifest: Manifest, max_loss: float = 0.01) -> str:
    """The series as text: a header with accuracies and MACs, then one line per split."""
    base, step1 = manifest.base_variant, manifest.step1_variant
    lines = [f"series: {len(manifest.variants)} variants"]
    if base:
        lines.append(f"original: test acc {base.accuracy:.4f}, {base.macs / 1e6:.2f} M MACs")
    if step1:
        lines.append(f"step 1 ({step1.id}): test acc {step1.accuracy:.4f}, "
                     f"{step1.macs / 1e6:.2f} M MACs ({base.macs / step1.macs:.2f}x fewer)")
    source = manifest.step1_continued_from
    if source:
        lines.append(f"step 1 went on from {source['series']} (its {source['kept']}, "
                     f"{source['mac_reduction']:.2f}x fewer MACs; {len(source['variants'])} variants copied)")
    lines.append(f"step 2: fewest bytes within {100 * max_loss:.1f} points of the original "
                 "(* = none within; most accurate shown)")
    header = (f"{'split':<10}{'prunes':<9}{'orig el':>9}{'orig f32 B':>11}{'orig B':>9}{'s1 el':>8}"
              f"{'s1 B':>8}{'s2 el':>7}{'s2 B':>8}{'el red':>8}{'B red':>9}{'s2 acc':>8}")
    lines += [header, "-" * len(header)]
    for r in series_rows(manifest, max_loss):
        s1 = f"{r.get('s1_elements', '-'):>8}{r.get('s1_bytes', float('nan')):>8.0f}"
        if "s2_id" in r:
            mark = "" if r["s2_within_budget"] else "*"
            s2 = (f"{r['s2_elements']:>7}{r['s2_bytes']:>8.0f}{r['element_reduction']:>7.1f}x"
                  f"{r['byte_reduction_vs_float32']:>8.1f}x{r['s2_accuracy']:>7.4f}{mark}")
        else:
            s2 = f"{'-':>7}{'-':>8}{'-':>8}{'-':>9}{'-':>8}"
        lines.append(f"{r['split']:<10}{r['group']:<9}{r['orig_elements']:>9}{r['orig_float32_bytes']:>11}"
                     f"{r['orig_bytes']:>9.0f}{s1}{s2}")
    lines += coupling_notes(manifest.base_arch)
    return "\n".join(lines)


def coupling_notes(spec: ArchSpec) -> list[str]:
    """What step 2 cuts where a split's channels are shared by several convs (ResNet and
    MobileNetV2 stages): one line per such group, naming the convs cut together."""
    groups = dict.fromkeys(pruned_layer(spec, p) for p in split_points(spec)[1:-1])
    notes = []
    for group in groups:
        members = spec.layout.members(group)
        if len(members) < 2:
            continue
        through = "a depthwise conv" if any(c.depthwise for c in members) else "residual adds"
        convs = ", ".join(c.path.removeprefix("stages.") for c in members)
        notes.append(f"  {group}: {len(members)} convs share these channels through {through} and "
                     f"are cut together ({convs})")
    if notes:
        notes.insert(0, "step 2 cuts coupled channel groups (every split of a stage shares one series):")
    return notes
