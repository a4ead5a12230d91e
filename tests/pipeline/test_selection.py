"""Selection: floor and budget decisions on constructed tables, deterministic ties, closest
candidates when nothing fits, input validation, speed, candidates from a series manifest, and
`twostep plan` on files written here."""

import json
import math
import random

import pytest

from pipeline.cost import Link, latency_breakdown
from pipeline.models import make_spec
from pipeline.profiler import derive_profile, profile_document, save_profile, timings_from_layers
from pipeline.selection import (
    Candidate,
    CandidateTable,
    NoFeasibleCandidate,
    baseline_candidates,
    candidates_from_series,
    select,
)
from pipeline.series import SeriesError, validate_manifest
from pipeline.split import split_points
from twostep.cli import main

# At 1 Mbit/s: A = 2 + 800 = 802 ms, B = 6 + 8 = 14 ms, C = 3 + 0.8 = 3.8 ms.
A = Candidate("a", "conv1_1", 0.95, 100_000, 1.0, 1.0)
B = Candidate("b", "pool3", 0.90, 1_000, 5.0, 1.0)
C = Candidate("c", "pool5", 0.85, 100, 2.0, 1.0)
MBIT = Link(1e6)


@pytest.mark.parametrize(
    ("floor", "best"), [(0.95, A), (0.9, B), (0.86, B), (0.85, C), (0.0, C)]
)
def test_floor_picks_the_fastest_accurate_enough(floor, best):
    decision = select([A, B, C], MBIT, accuracy_floor=floor)
    assert decision.best == best
    expected = latency_breakdown(best.head_ms, best.bytes_sent, best.tail_ms, MBIT)
    assert decision.breakdown == expected
    totals = [b.total_ms for _, b in decision.ranked]
    assert totals == sorted(totals) and decision.ranked[0] == (decision.best, decision.breakdown)
    assert all(c.accuracy >= floor for c, _ in decision.ranked)


@pytest.mark.parametrize(("budget", "best"), [(4, C), (14, B), (20, B), (802, A), (1e9, A)])
def test_budget_picks_the_most_accurate_in_time(budget, best):
    decision = select([A, B, C], MBIT, latency_budget_ms=budget)
    assert decision.best == best
    assert all(b.total_ms <= budget for _, b in decision.ranked)


def test_bandwidth_changes_the_decision_and_rtt_counts():
    assert select([A, B, C], Link(1e9), accuracy_floor=0.8).best == A  # 2.8 ms < 3.8 ms
    decision = select([A, B, C], Link(1e6, rtt_ms=10), accuracy_floor=0.9)
    assert decision.best == B and decision.breakdown.total_ms == pytest.approx(24.0)


def test_top_k_limits_the_ranking():
    assert len(select([A, B, C], MBIT, accuracy_floor=0.0, top_k=2).ranked) == 2
    assert len(select([A, B, C], MBIT, accuracy_floor=0.0, top_k=10).ranked) == 3


def test_ties_are_deterministic():
    # At 8 kbit/s one byte takes 1 ms, so every candidate below totals 12 ms.
    link = Link(8e3)
    x = Candidate("x", "pool1", 0.9, 10, 2.0, 0.0)
    y = Candidate("y", "pool2", 0.9, 6, 6.0, 0.0)
    z = Candidate("a-z", "pool2", 0.9, 6, 6.0, 0.0)
    w = Candidate("w", "pool2", 0.95, 10, 2.0, 0.0)
    for perm in ([x, y, z, w], [w, z, y, x], [y, w, x, z]):
        floor = select(perm, link, accuracy_floor=0.9, top_k=4)
        assert {b.total_ms for _, b in floor.ranked} == {12.0}
        # Equal latency: higher accuracy, then fewer bytes, then the id.
        assert [c.variant_id for c, _ in floor.ranked] == ["w", "a-z", "y", "x"]
        budget = select(perm, link, latency_budget_ms=12, top_k=4)
        assert [c.variant_id for c, _ in budget.ranked] == ["w", "a-z", "y", "x"]
    slower = Candidate("s", "pool3", 0.95, 10, 3.0, 0.0)
    budget = select([slower, x, w], link, latency_budget_ms=100)
    assert [c.variant_id for c, _ in budget.ranked] == ["w", "s", "x"]


def test_no_feasible_candidate_names_the_closest():
    with pytest.raises(NoFeasibleCandidate, match="accuracy >= 0.99") as err:
        select([A, B, C], MBIT, accuracy_floor=0.99)
    assert [c for c, _ in err.value.closest] == [A, B, C]
    assert "a@conv1_1" in str(err.value) and isinstance(err.value, ValueError)
    with pytest.raises(NoFeasibleCandidate, match="within 1 ms") as err:
        select([A, B, C], MBIT, latency_budget_ms=1)
    assert err.value.closest[0][0] == C and "c@pool5" in str(err.value)


@pytest.mark.parametrize("bandwidth", [0, -1, math.nan, math.inf, 1e13])
def test_bad_bandwidth_is_rejected(bandwidth):
    with pytest.raises(ValueError, match="bandwidth"):
        select([A, B, C], Link(bandwidth), accuracy_floor=0.9)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"accuracy_floor": -0.1}, "fraction"),
        ({"accuracy_floor": 1.5}, "fraction"),
        ({"accuracy_floor": 90}, "0.9 means 90%"),
        ({"accuracy_floor": math.nan}, "fraction"),
        ({"latency_budget_ms": -1}, "budget"),
        ({"latency_budget_ms": math.inf}, "budget"),
        ({}, "exactly one"),
        ({"accuracy_floor": 0.9, "latency_budget_ms": 10}, "exactly one"),
        ({"accuracy_floor": 0.9, "top_k": 0}, "top_k"),
    ],
)
def test_bad_constraints_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        select([A, B, C], MBIT, **kwargs)


def test_bad_candidates_and_links_are_rejected():
    with pytest.raises(ValueError, match="no candidates"):
        select([], MBIT, accuracy_floor=0.5)
    with pytest.raises(ValueError, match="duplicate candidate b@pool3"):
        select([A, B, B], MBIT, accuracy_floor=0.5)
    with pytest.raises(ValueError, match="Link"):
        select([A], 1e6, accuracy_floor=0.5)
    with pytest.raises(ValueError, match="accuracy"):
        Candidate("v", "pool1", 91.0, 10, 1, 1)
    with pytest.raises(ValueError, match="bytes_sent"):
        Candidate("v", "pool1", 0.9, -10, 1, 1)


def _random_candidates(n, seed=0):
    rng = random.Random(seed)
    return [
        Candidate(f"v{i // 10}", f"s{i % 10}", rng.uniform(0.7, 0.95), rng.uniform(0, 1e5),
                  rng.uniform(0, 50), rng.uniform(0, 10))
        for i in range(n)
    ]


def test_table_matches_the_plain_loop():
    candidates = _random_candidates(300)
    table = CandidateTable.from_candidates(candidates)
    link = Link(2e6, rtt_ms=5)
    decision = table.select(link, accuracy_floor=0.85)
    feasible = [c for c in candidates if c.accuracy >= 0.85]
    total = {c: latency_breakdown(c.head_ms, c.bytes_sent, c.tail_ms, link).total_ms
             for c in feasible}
    assert decision.best == min(feasible, key=total.__getitem__)


SPEC = make_spec("vgg11", 0.0625, in_channels=1)
NAMES = split_points(SPEC)[1:]


def _profile(scale):
    """A profile where every layer of variant v1 takes 1 ms x scale, of v2 0.5 ms x scale."""
    variants = {
        vid: timings_from_layers(NAMES, [ms * scale] * len(NAMES))
        for vid, ms in (("v1", 1.0), ("v2", 0.5))
    }
    return profile_document(variants, batch_size=1, warmup=1, repeats=1)


def _manifest():
    return validate_manifest(_document())


def _document():
    spec = SPEC.to_dict()
    split = {"head_macs": 1, "tail_macs": 1, "elements": 64}
    return {
        "format": "twostep-series/1",
        "base_spec": spec,
        "codec": {"bits": 8, "per_channel": False, "compress": True},
        "data": {"name": "tiny"},
        "variants": [
            {"id": "v1", "step": 1, "split": None, "iteration": 2, "spec": spec,
             "val_accuracy": 0.9, "test_accuracy": 0.88, "macs": 10,
             "splits": {"conv1_1": {**split, "bytes_mean": 4000.0, "bytes_p95": 4500.0},
                        "pool5": {**split, "bytes_mean": 40.0, "bytes_p95": 45.0}},
             "weights": "weights/v1.safetensors", "sha256": "0" * 64},
            {"id": "v2", "step": 2, "split": "pool3", "iteration": 5, "spec": spec,
             "val_accuracy": 0.8, "test_accuracy": None, "macs": 5,
             "splits": {"pool3": {**split, "bytes_mean": 100.0, "bytes_p95": 130.0}},
             "weights": "weights/v2.safetensors", "sha256": "0" * 64},
        ],
    }


def test_candidates_from_series():
    device, edge = _profile(5.0), _profile(1.0)
    candidates = candidates_from_series(_manifest(), device, edge)
    got = {(c.variant_id, c.split): c for c in candidates}
    assert set(got) == {("v1", "conv1_1"), ("v1", "pool5"), ("v2", "pool3")}
    c = got[("v1", "conv1_1")]
    assert (c.accuracy, c.bytes_sent, c.head_ms, c.tail_ms) == (0.88, 4000.0, 5.0, 13.0)
    c = got[("v2", "pool3")]
    # v2: test accuracy is null, so val; pool3 is the 7th layer of 14 (0.5 ms each).
    assert (c.accuracy, c.bytes_sent, c.head_ms, c.tail_ms) == (0.8, 100.0, 17.5, 3.5)
    p95 = candidates_from_series(_manifest(), device, edge, bytes_stat="p95")
    assert sorted(c.bytes_sent for c in p95) == [45.0, 130.0, 4500.0]
    with pytest.raises(ValueError, match="bytes_stat"):
        candidates_from_series(_manifest(), device, edge, bytes_stat="max")
    edge_v1 = profile_document({"v1": edge["variants"]["v1"]}, 1, 1, 1)
    with pytest.raises(ValueError, match="no variant 'v2'"):
        candidates_from_series(_manifest(), device, edge_v1)
    stale = _profile(1.0)
    stale["variants"]["v1"]["spec"] = SPEC.with_widths({"conv1_1": 1}).to_dict()
    with pytest.raises(ValueError, match="stale profile"):
        candidates_from_series(_manifest(), device, stale)
    same = _profile(1.0)
    same["variants"]["v1"]["spec"] = SPEC.to_dict()
    assert len(candidates_from_series(_manifest(), device, same)) == 3
    bad = _document()
    bad["variants"][0]["test_accuracy"] = 88.0  # a percentage: refused when the series is read
    with pytest.raises(SeriesError, match="variants.0.test_accuracy"):
        validate_manifest(bad)
    with pytest.raises(ValueError, match="no variants"):
        candidates_from_series(validate_manifest({**_document(), "variants": []}), device, edge)


def test_baseline_candidates():
    device, edge = _profile(5.0), _profile(1.0)
    baselines = baseline_candidates(_manifest(), device, edge, jpeg_input_bytes=300)
    got = {(c.variant_id, c.strategy): c for c in baselines}
    assert len(got) == 6
    raw = got[("v1", "raw-input")]
    assert (raw.split, raw.bytes_sent, raw.head_ms, raw.tail_ms) == ("input", 1024, 0.0, 14.0)
    local = got[("v2", "all-on-device")]
    assert (local.split, local.bytes_sent, local.head_ms, local.tail_ms) == ("output", 0, 35.0, 0)
    assert got[("v1", "jpeg-input")].bytes_sent == 300
    # A slow link and a fast device: running everything locally wins.
    decision = select(baselines, Link(1e3), accuracy_floor=0.85)
    assert decision.best.strategy == "all-on-device" and decision.breakdown.transfer_ms == 0


def _write_series(root):
    (root / "manifest.json").write_text(json.dumps(_document()))
    save_profile(root / "profile.json", _profile(1.0))
    return root


def test_cli_plan(tmp_path, capsys):
    root = _write_series(tmp_path)
    argv = ["plan", str(root), "--bandwidth", "1mbit", "--accuracy-floor", "0.85"]
    argv += ["--slowdown", "5"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    # 1,024 raw bytes (8.2 ms) + 14 ms on the edge beat 65 ms of device work at pool5.
    assert "best: v1@input (raw-input)" in out and "v1       pool5" in out
    assert main([*argv, "--no-baselines"]) == 0
    assert "best: v1@conv1_1, accuracy 0.8800" in capsys.readouterr().out
    assert main(["plan", str(root), "--bandwidth", "250kbit", "--latency-budget-ms", "1000",
                 "--slowdown", "5", "--json", "--top", "3", "--no-baselines"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["best"]["variant"] == "v1" and len(doc["ranked"]) == 3
    save_profile(root / "profile.device.json", derive_profile(_profile(1.0), 5))
    assert main(["plan", str(root), "--bandwidth", "2.5e6", "--accuracy-floor", "0.8"]) == 0
    assert "device profile" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--bandwidth", "fast", "--accuracy-floor", "0.8"], "'fast'"),
        (["--bandwidth", "0", "--accuracy-floor", "0.8"], "'0'"),
        (["--bandwidth", "1mbit", "--accuracy-floor", "90"], "90"),
        (["--bandwidth", "1mbit", "--accuracy-floor", "0.99"], "closest: v1@"),
        (["--bandwidth", "1mbit", "--latency-budget-ms", "-5"], "-5"),
        (["--bandwidth", "1mbit", "--accuracy-floor", "0.8", "--slowdown", "0"], "slowdown"),
    ],
)
def test_cli_plan_errors_exit_2(tmp_path, capsys, extra, message):
    root = _write_series(tmp_path)
    slowdown = [] if "--slowdown" in extra else ["--slowdown", "5"]
    assert main(["plan", str(root), *extra, *slowdown]) == 2
    assert message in capsys.readouterr().err


def test_cli_plan_needs_a_device_profile(tmp_path, capsys):
    root = _write_series(tmp_path)
    assert main(["plan", str(root), "--bandwidth", "1mbit", "--accuracy-floor", "0.8"]) == 2
    assert "--device-profile" in capsys.readouterr().err
