"""The demo pipeline end to end on a tiny configuration: every stage leaves its artifact."""

import json

import pytest
from PIL import Image

from twostep.demo import prune_stage, run_demo, train_stage
from twostep.demo_config import load_demo_config

pytestmark = pytest.mark.integration


def test_demo_produces_series_profile_plots_and_table(ray_session, learnable_fashion_dir, tmp_path):
    out = tmp_path / "demo"
    (tmp_path / "tiny.toml").write_text(f"""
[train]
data_dir = "{learnable_fashion_dir}"
arch = "vgg11"
width = 0.125
epochs = 3
train_subset = 0
test_subset = 0
augment = false

[prune]
data_dir = "{learnable_fashion_dir}"
train_subset = 0
val_subset = 0
test_subset = 0
rank_batches = 1
step1_finetune_epochs = 0.2
step1_max_iterations = 1
step1_budget = 1.0
step2_splits = ["pool2", "pool5"]
step2_steps = 2
step2_finetune_epochs = 0.2
bytes_images = 8
augment = false

[demo]
bandwidths = ["100kbit", "10mbit"]
requests_per_bandwidth = 3
accuracy_drop = 0.5
trace = "{tmp_path / 'tunnel.log'}"
trace_seconds = 6
""")
    (tmp_path / "tunnel.log").write_text("0 10\n2 0.001\n4 10\n")  # 2 s fast, a 2 s tunnel, fast
    config = load_demo_config(tmp_path / "tiny.toml", out=str(out))
    logged = []
    result = run_demo(config, progress=False, log=logged.append)

    manifest = json.loads((out / "series" / "manifest.json").read_text())
    steps = sorted({v["step"] for v in manifest["variants"]})
    assert steps == [0, 1, 2] and manifest["step1"] is not None
    profile = json.loads((out / "series" / "profile.json").read_text())
    assert set(profile["variants"]) == {v["id"] for v in manifest["variants"]}
    assert (out / "series" / "profile.device.json").is_file()
    for name in ("split_sizes", "accuracy_vs_bytes", "latency_vs_bandwidth", "trace"):
        with Image.open(out / f"{name}.png") as picture:
            assert picture.size[0] > 300 and picture.size[1] > 200
    results = json.loads((out / "results.json").read_text())
    summary = {row["bandwidth_mbit"]: row for row in results["summary"]}
    assert set(summary) == {0.1, 10.0}
    assert all(row["requests"] == 3 and row["measured_p50_ms"] > 0 for row in summary.values())
    # like with like: every line of the picture is measured, at every bandwidth, through the
    # same serving path; a baseline runs the (variant, split) it names
    from twostep.demo import LINES

    assert all(set(row["lines_p50_ms"]) == set(LINES) for row in summary.values())
    requests = results["requests"]
    on_device = [r for r in requests if r["line"] == "all on device"]
    assert on_device and all(r["split"] == "output" and r["bytes_sent"] == 0 for r in on_device)
    raw = [r for r in requests if r["line"] == "raw input to edge"]
    assert raw and all(r["split"] == "input" and r["variant"] == manifest["base"] for r in raw)
    assert all(r["variant"] == manifest["step1"] for r in requests if r["line"] == "best split, step 1")
    # a slower link never makes the router send more bytes
    assert summary[0.1]["bytes_sent"] <= summary[10.0]["bytes_sent"]
    # the trace replayed live: 5 images a second for 6 s, each choice priced on the trace
    trace = results["trace"]
    assert trace["name"] == "tunnel.log[0s+6s]" and len(trace["rows"]) == 30
    assert trace["live"]["mean_ms"] >= trace["oracle"]["mean_ms"] - 1e-6
    assert {r["variant"] for r in trace["rows"]} <= {v["id"] for v in manifest["variants"]}
    table = (out / "results.md").read_text()
    assert "0.1 Mbit/s" in table and "10 Mbit/s" in table
    assert result["table"] == table.strip()
    assert any("[5/5]" in line for line in logged)

    # a second run reuses the trained model and the finished series: its first two stages
    # (the later ones serve and measure afresh, as above) train nothing and prune nothing
    again = []
    assert train_stage(config.train, False, again.append)["cached"]
    assert any("reusing" in line for line in again)
    before = (out / "series" / "manifest.json").read_text()
    assert prune_stage(config, False, again.append).ids() == [v["id"] for v in manifest["variants"]]
    assert (out / "series" / "manifest.json").read_text() == before  # not a byte rewritten
