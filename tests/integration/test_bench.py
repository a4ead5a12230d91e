"""`twostep bench` end to end on a tiny series: a real edge (Ray Serve), a device process and the
link (shaped with namespaces where permitted, else emulated); every strategy measured."""

import json

import pytest

from pipeline.base_model import train_base
from pipeline.config import PruneConfig, TrainConfig
from pipeline.prune_job import prune_series
from twostep.bench.config import BenchConfig
from twostep.bench.run import run_bench
from twostep.shaped_link import available as shaped_available

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_series(learnable_fashion_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-series")
    base = root / "base.safetensors"
    train_base(TrainConfig(data_dir=str(learnable_fashion_dir), arch="vgg11", width=0.125, epochs=2,
                           augment=False, out=str(base)), progress=False, log=None)
    config = PruneConfig(base=str(base), data_dir=str(learnable_fashion_dir), out=str(root / "series"),
                         rank_batches=1, batch_size=32, step1_finetune_epochs=0.1,
                         step2_finetune_epochs=0.1, step1_budget=1.0, step1_max_iterations=1,
                         step2_steps=2, bytes_images=8, augment=False, step2_splits=("pool5",))
    return prune_series(config, progress=False, log=lambda _: None)


STALL_TRACE = "0 2.0\n1 0.002\n2 2.0\n"  # 2 Mbit/s, a 1-second stall, 2 Mbit/s: 3 s


def test_bench_measures_every_strategy_on_the_serving_path(tiny_series, tmp_path):
    """The grid and, where the shaped link can be made, a trace replay in the same run (one edge)."""
    out = tmp_path / "bench"
    trace = tmp_path / "stall.txt"
    trace.write_text(STALL_TRACE)
    config = BenchConfig(series=str(tiny_series.directory), out=str(out), bandwidths=("100kbit", "100mbit"),
                         slowdowns=(1.0, 10.0), requests=3, calibration_requests=3, accuracy_images=50,
                         max_loss=0.2, trace=str(trace) if shaped_available() else None, trace_grid=True)
    logged = []
    document = run_bench(config, progress=False, log=logged.append)
    for name in ("bench.json", "bench.md", "profile.edge.json", "latency_vs_bandwidth_device10x.png",
                 "split_sizes.png", "accuracy_vs_bytes.png"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "bench.json").read_text())["targets"] == document["targets"]
    assert "Targets:" in (out / "bench.md").read_text() and any("link:" in line for line in logged)

    rows = {(r["bandwidth_mbit"], r["slowdown"], r["strategy"]): r for r in document["rows"]}
    assert len(rows) == 2 * 2 * 6
    shaped = document["link"]["kind"] == "shaped"
    for row in rows.values():
        assert row["requests"] == 3 and row["measured_p50_ms"] > 0
        if row["execution"]["mode"] == "device":
            assert row["payload_bytes"] == 0 and row["measured_parts"]["transfer_ms"] == 0
        else:
            assert row["payload_bytes"] > 0
            if shaped:  # every byte on the link is counted: headers make it more than the payload
                assert row["link_tx_bytes"] > row["payload_bytes"] + 40
    # The raw input really crosses a 100 kbit/s link: at least its payload's serialisation time.
    raw_slow, raw_fast = rows[(0.1, 1.0, "b")], rows[(100.0, 1.0, "b")]
    assert raw_slow["measured_parts"]["transfer_ms"] >= 0.9 * 1024 * 8 / 1e5 * 1000
    assert raw_slow["measured_p50_ms"] > raw_fast["measured_p50_ms"] + 50
    # A 10x slower device takes longer for the same on-device work.
    assert rows[(0.1, 10.0, "a")]["measured_p50_ms"] > 3 * rows[(0.1, 1.0, "a")]["measured_p50_ms"]
    # The router's choice respects the floor (here: the base's accuracy minus 20 points).
    assert all(rows[(m, s, "f")]["accuracy"] >= document["accuracy_floor"] for m, s, _ in rows)
    if config.trace is None:
        return
    # The trace: the device plans itself over its session at every slowdown. (The tiny model is
    # cheaper on the device than any frame here, so it never offloads: the oracle agrees; the
    # deadline's path is tested in test_serve_app.)
    assert (out / "trace.md").stat().st_size > 0 and (out / "trace_device10x.png").stat().st_size > 0
    replayed = json.loads((out / "trace.json").read_text())["rows"]
    for summary in document["traces"]:
        rows = replayed[f"{summary['slowdown']:g}"]
        assert summary["requests"] == len(rows) == 15
        assert summary["targets"]["floor_held"] and summary["ratio_to_oracle"] <= 1.05
        assert set(summary["fixed"]) == {"a", "b", "c", "d", "e"}
        # the oracle chooses among what (a), (b), (d) and (e) run, per request, on an empty link
        assert summary["oracle"]["mean_ms"] <= min(summary["fixed"][k]["mean_ms"] for k in "abde") + 1e-9
        assert all(r["wall_ms"] > 0 and r["variant"] for r in rows)
