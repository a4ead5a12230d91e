"""`twostep bench` without Ray: strategy choices, the report's targets, config and CLI errors."""

import pytest

from pipeline.profiler import derive_profile
from serve.profiles import estimate_profile
from twostep.bench.config import BenchConfig
from twostep.bench.device_side import attribute_bytes
from twostep.bench.emulation import device_time
from twostep.bench.report import deviations, strategy_rows, targets
from twostep.bench.strategies import Execution, LinkCosts, baseline_choices, execution_for
from twostep.cli import main


@pytest.fixture(scope="module")
def edge_profile(tiny_store):
    return estimate_profile(tiny_store.manifest, ms_per_mmac=2.0, layer_ms=0.05)


def _choices(tiny_store, edge_profile, slowdown, bps, costs=LinkCosts(300, 5.0)):
    return baseline_choices(tiny_store.manifest, edge_profile, slowdown, costs, bps,
                            raw_bytes=1024, jpeg_bytes=600, jpeg_encode_ms=0.2)


def test_link_costs_add_header_bytes_at_the_link_rate():
    costs = LinkCosts(overhead_bytes=250, fixed_ms=4.0)
    assert costs.rtt_ms(1e5) == pytest.approx(4.0 + 250 * 8 / 1e5 * 1000)
    assert costs.link(1e6).rtt_ms == pytest.approx(4.0 + 2.0)


def test_baselines_are_the_papers_strategies(tiny_store, edge_profile):
    choices = _choices(tiny_store, edge_profile, 5.0, 1e6)
    assert set(choices) == set("abcde")
    assert choices["a"][0] == Execution("device", "vgg11-base", "output")
    assert choices["a"][1]["bytes"] == 0 and choices["a"][1]["transfer_ms"] == 0
    # (b) sends the input as the device path does: the coded frame at `input`, in one hop
    input_bytes = tiny_store.get("vgg11-base").splits["input"].bytes_mean
    assert choices["b"][0] == Execution("frame", "vgg11-base", "input")
    assert choices["b"][1]["bytes"] == input_bytes
    assert choices["c"][0].mode == "jpeg" and choices["c"][1]["device_ms"] == pytest.approx(1.0)
    # (d) is the cheapest split of the unpruned model under the same cost model.
    device = derive_profile(edge_profile, 5.0)["variants"]["vgg11-base"]
    edge = edge_profile["variants"]["vgg11-base"]
    splits = tiny_store.get("vgg11-base").splits
    costs = LinkCosts(300, 5.0)

    def predicted(split):
        sent = 0 if split == "output" else splits[split].bytes_mean
        transfer = 0 if split == "output" else sent * 8 / 1e6 * 1000 + costs.rtt_ms(1e6)
        return device["head_ms"][split] + transfer + edge["tail_ms"][split]

    best = min(splits, key=predicted)
    assert choices["d"][0].split == best
    assert choices["d"][1]["total_ms"] == pytest.approx(predicted(best))


def test_a_slow_link_keeps_everything_on_the_device_and_a_slow_device_sends(tiny_store, edge_profile):
    slow_link = _choices(tiny_store, edge_profile, 1.0, 1e3)
    assert slow_link["d"][0].mode == "device"
    slow_device = _choices(tiny_store, edge_profile, 1000.0, 1e9, LinkCosts(0, 0.0))
    assert slow_device["d"][0].split == "input"


def test_planner_rows_map_to_executions():
    assert execution_for("v", "pool3") == Execution("frame", "v", "pool3")
    assert execution_for("v", "output") == Execution("device", "v", "output")
    # raw input goes the one-hop device path too: the coded input frame to /v1/tail
    assert execution_for("v", "input", "raw-input") == Execution("frame", "v", "input")
    assert execution_for("v", "output", "all-on-device").mode == "device"
    with pytest.raises(ValueError, match="mode"):
        Execution("carrier-pigeon", "v", "input")


def _request(total, correct=True, payload=0, device=0.0, send=0.0, edge=0.0):
    return {"total_ms": total, "correct": correct, "payload_bytes": payload, "device_ms": device,
            "send_ms": send, "edge_compute_ms": edge, "tx_bytes": payload + 300 if payload else 0,
            "rx_bytes": 0}


def _document(tiny_store, f_total, d_total):
    """One grid point where (a)-(e) share two executions and the router picked a third."""
    base, step2 = "vgg11-base", "vgg11-s2-conv5_2-i1"
    on_device = Execution("device", base, "output")
    sent = Execution("frame", step2, "pool5")
    measured = {
        on_device.key: {"execution": on_device.to_dict(),
                        "rows": [_request(d_total, device=d_total)] * 3},
        sent.key: {"execution": sent.to_dict(),
                   "rows": [_request(f_total, payload=40, device=1.0, send=f_total - 1, edge=0.5)] * 3},
    }
    predicted = {k: {"execution": on_device.key, "device_ms": d_total, "transfer_ms": 0.0,
                     "edge_ms": 0.0, "total_ms": d_total, "bytes": 0} for k in "abcde"}
    plan = {"device_ms": 1.0, "transfer_ms": 2.0, "edge_ms": 0.5, "total_ms": 3.5}
    return {"points": [{"bandwidth_mbit": 0.1, "slowdown": 10.0, "predicted": predicted,
                        "router_execution": sent.key, "plan": plan, "measured": measured}],
            "jpeg": {"accuracy": 0.5}, "base_test_accuracy": 0.9}


def test_targets_and_deviations_come_from_the_measured_rows(tiny_store):
    rows = strategy_rows(_document(tiny_store, f_total=10.0, d_total=60.0), tiny_store)
    assert [r["strategy"] for r in rows] == list("abcdef")
    f = rows[-1]
    assert f["choice"] == "vgg11-s2-conv5_2-i1@pool5" and f["link_tx_bytes"] == 340
    result = targets(rows, 0.9)
    assert result["within_10_percent"]["met"]
    assert result["reduction_vs_d"]["d_over_f"] == pytest.approx(6.0) and result["reduction_vs_d"]["met"]
    # The variant the router chose is 5 points under the unpruned model.
    assert result["accuracy_loss"]["points"] == pytest.approx(0.05)
    assert not result["accuracy_loss"]["met"]
    notes = deviations(rows)
    assert [n["strategy"] for n in notes] == ["f"]  # measured 10 ms, predicted 3.5 ms
    assert notes[0]["part"] == "transfer_ms"


def test_a_mispredicted_d_does_not_inflate_the_reduction(tiny_store):
    rows = strategy_rows(_document(tiny_store, f_total=10.0, d_total=60.0), tiny_store)
    p50 = {"a": 60.0, "b": 80.0, "c": 5.0, "d": 100.0, "e": 20.0}  # (c) JPEG and (e) step 1 prune
    for row in rows:
        if row["strategy"] in p50:  # the cost model's pick for (d) measured slow: (a) stands for it
            row["measured_p50_ms"] = p50[row["strategy"]]
    reduction = targets(rows, 0.9)["reduction_vs_d"]
    assert reduction["d_over_f"] == pytest.approx(6.0) and reduction["d_measured_as"] == "a"


def test_a_router_slower_than_a_baseline_breaks_the_10_percent_target(tiny_store):
    rows = strategy_rows(_document(tiny_store, f_total=70.0, d_total=60.0), tiny_store)
    result = targets(rows, 0.9)
    assert not result["within_10_percent"]["met"]
    assert result["within_10_percent"]["violations"][0]["f_over_best"] == pytest.approx(70 / 60)
    assert not result["reduction_vs_d"]["met"]


@pytest.mark.parametrize("field, value, message", [
    ("bandwidths", (0.0,), "bandwidths"), ("slowdowns", (0.5,), "slowdowns"),
    ("requests", 0, "requests"), ("link", "wifi", "link"), ("max_loss", 1.5, "max_loss"),
])
def test_bad_bench_settings_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        BenchConfig(series="x", **{field: value})


def test_cli_names_a_missing_series_and_a_bad_grid(tmp_path, capsys):
    assert main(["bench", "--series", str(tmp_path / "nope")]) == 2
    assert "is not a model series directory" in capsys.readouterr().err
    (tmp_path / "manifest.json").write_text("{}")
    assert main(["bench", "--series", str(tmp_path), "--bandwidths", "1mbit,fast"]) == 2
    assert "bandwidths[1]: cannot read bandwidth 'fast'" in capsys.readouterr().err
    assert main(["bench", "--series", str(tmp_path), "--bandwidths", "1,100"]) == 2  # Mbit/s meant
    assert "bandwidth '1' is 1 bit/s" in capsys.readouterr().err


def test_link_bytes_run_from_one_request_to_the_next_less_the_filler():
    device, frame = {"mode": "device"}, {"mode": "frame"}
    # Order: a0, f0, a1, f1; the device-only request sends nothing but may carry late ACKs.
    out = {"a": {"execution": device, "rows": [{}, {}], "_before": [(0, 0), (1600, 880)]},
           "f": {"execution": frame, "rows": [{}, {}], "_before": [(0, 0), (1700, 900)]}}
    attribute_bytes(out, (3500, 1800), filler=1514)
    assert out["a"]["rows"][0] == {"tx_bytes": 0, "rx_bytes": 0}
    assert out["f"]["rows"][0] == {"tx_bytes": 1600 - 1514, "rx_bytes": 880}
    assert out["a"]["rows"][1] == {"tx_bytes": 100, "rx_bytes": 20}
    assert out["f"]["rows"][1] == {"tx_bytes": 1800 - 1514, "rx_bytes": 900}
    assert "_before" not in out["a"]
    unknown = {"a": {"execution": frame, "rows": [{}], "_before": [None]}}
    attribute_bytes(unknown, None, filler=0)
    assert unknown["a"]["rows"][0]["tx_bytes"] is None


def test_the_accuracy_target_follows_max_loss(tiny_store):
    rows = strategy_rows(_document(tiny_store, f_total=10.0, d_total=60.0), tiny_store)
    assert targets(rows, 0.9, max_loss=0.06)["accuracy_loss"]["met"]


def test_the_calibrated_device_factor_scales_the_device_side_predictions(tiny_store, edge_profile):
    calibrated = _choices(tiny_store, edge_profile, 5.0, 1e6, LinkCosts(300, 5.0, device_factor=2.0))
    plain = _choices(tiny_store, edge_profile, 10.0, 1e6, LinkCosts(300, 5.0))
    assert calibrated == plain
    assert LinkCosts(0, 0, 1.5).device_slowdown(4.0) == 6.0


def test_the_device_model_is_fitted_through_two_models():
    from twostep.bench.calibrate import device_model

    profile = {"variants": {"big": {"head_ms": {"output": 5.0}}, "small": {"head_ms": {"output": 1.0}}}}
    fitted = device_model([7.0, 3.0], profile, ("big", "small"))
    assert fitted == pytest.approx({"device_factor": 1.0, "device_overhead_ms": 2.0})
    # Noise that would give a negative overhead falls back to one factor.
    assert device_model([5.0, 0.5], profile, ("big", "small")) == {"device_factor": 1.0,
                                                                    "device_overhead_ms": 0.0}


def test_a_per_call_device_overhead_is_charged_to_every_head_that_runs(tiny_store, edge_profile):
    plain = _choices(tiny_store, edge_profile, 2.0, 1e3, LinkCosts(300, 5.0))
    charged = _choices(tiny_store, edge_profile, 2.0, 1e3, LinkCosts(300, 5.0, 1.0, 1.5))
    assert charged["a"][1]["device_ms"] == pytest.approx(plain["a"][1]["device_ms"] + 3.0)
    assert charged["b"][1]["device_ms"] == 0  # raw pixels: nothing runs on the device


def test_the_device_is_slowdown_times_its_cpu_time_never_faster_than_it_ran():
    assert device_time(wall_ms=3.0, cpu_ms=2.0, slowdown=10) == 20.0
    assert device_time(wall_ms=3.0, cpu_ms=2.0, slowdown=1) == 3.0  # 1x: as it ran here
    # waiting (preempted by the edge's processes, or sleeping) is not work the device slows down
    import time

    start, cpu_start = time.perf_counter_ns(), time.thread_time_ns()
    time.sleep(0.05)
    wall, cpu = (time.perf_counter_ns() - start) / 1e6, (time.thread_time_ns() - cpu_start) / 1e6
    assert device_time(wall, cpu, slowdown=10) < 1.5 * wall


def test_the_device_fit_follows_calls_that_do_not_grow_with_the_profile(edge_profile):
    from twostep.bench.calibrate import fit_device

    line = fit_device({"a": 0.2, "b": 0.5, "c": 0.8}, {"a": 0.4, "b": 0.55, "c": 0.7})
    assert line["device_factor"] == pytest.approx(0.5) and line["device_overhead_ms"] == pytest.approx(0.3)
    flat = fit_device({"a": 0.2, "b": 0.5}, {"a": 0.7, "b": 0.6})  # larger profile, faster call
    assert 0 < flat["device_factor"] <= 1e-3  # stays a valid slowdown (0 would be refused)
    assert flat["device_overhead_ms"] == pytest.approx(0.65, abs=1e-3)
    from pipeline.profiler import derive_profile

    assert derive_profile(edge_profile, LinkCosts(0, 0.0, **flat).device_slowdown(10.0))
    through_origin = fit_device({"a": 0.2, "b": 0.4}, {"a": 0.1, "b": 0.5})  # intercept < 0
    assert through_origin["device_overhead_ms"] == 0.0 and through_origin["device_factor"] > 1


def test_the_request_cost_on_the_device_is_not_slowed_down():
    costs = LinkCosts(0, 0.0, device_factor=1.0, device_overhead_ms=0.3, device_request_ms=0.1)
    assert costs.device_overhead(10.0) == pytest.approx(3.1)
    assert costs.device_overhead(1.0) == pytest.approx(0.4)


def test_the_device_times_the_executions_that_could_win_and_they_replace_the_line(tiny_store,
                                                                                   edge_profile):
    from twostep.bench.shortlist import device_times_at, shortlist

    costs = LinkCosts(300, 5.0)
    manifest = tiny_store.manifest
    slow_link, fast_link = 1e4, 1e9
    picked = shortlist(manifest, edge_profile, costs, slow_link, [1.0, 10.0], accuracy_floor=0.0)
    keys = {e.key for e in picked}
    assert len(keys) == len(picked) and all(e.mode in ("device", "frame") for e in picked)
    # on a slow link the whole unpruned model on the device is among them ((a) and (d) pick it)
    assert "device:vgg11-base@output" in keys
    assert any(e.variant != manifest.base for e in picked)  # the router's pool: the series
    # a floor nothing meets leaves (d) and (e)'s models only
    strict = shortlist(manifest, edge_profile, costs, fast_link, [1.0], accuracy_floor=1.01)
    assert {e.variant for e in strict} <= {manifest.base, manifest.step1}

    measured = {e.key: 2.0 for e in picked}
    times = device_times_at(measured, picked, slowdown=10.0, request_ms=0.1)
    assert times[("vgg11-base", "output")] == pytest.approx(20.1)
    # with the device's own times, (a) is predicted at them, not at the line
    timed = baseline_choices(manifest, edge_profile, 10.0, costs, slow_link, 1024, 600, 0.2, times)
    assert timed["a"][1]["device_ms"] == pytest.approx(20.1)
    plain = _choices(tiny_store, edge_profile, 10.0, slow_link, costs)
    assert plain["a"][1]["device_ms"] != pytest.approx(20.1)


def test_a_plans_best_that_nobody_timed_is_named_until_every_pool_best_was_timed(tiny_store,
                                                                                  edge_profile):
    from twostep.bench.shortlist import shortlist, untimed_picks

    costs = LinkCosts(300, 5.0)
    manifest = tiny_store.manifest
    picked = shortlist(manifest, edge_profile, costs, 1e4, [1.0, 10.0], accuracy_floor=0.0)
    # timed slower than the line says, every short-listed execution loses to one not timed
    slow = {e.key: 50.0 for e in picked}
    missing = untimed_picks(manifest, edge_profile, costs, 1e4, [1.0, 10.0], 0.0, slow, picked)
    assert missing and all(e.key not in slow for e in missing)
    assert all(e.mode in ("device", "frame") for e in missing)
    # once those are timed (and fast), every pool's best is a timed execution: nothing left
    timed = {**slow, **{e.key: 0.01 for e in missing}}
    assert untimed_picks(manifest, edge_profile, costs, 1e4, [1.0, 10.0], 0.0, timed,
                         picked + missing) == []
    # only what ranks above a pool's best timed execution comes back: one fast timed execution
    # of every pool leaves nothing ranked below it
    fast = {e.key: 0.001 for e in picked}
    assert untimed_picks(manifest, edge_profile, costs, 1e4, [1.0, 10.0], 0.0, fast, picked) == []


def test_calibration_times_every_untimed_best_and_names_what_is_left(tiny_store, edge_profile,
                                                                       monkeypatch):
    from twostep.bench import calibrate
    from twostep.bench.shortlist import untimed_picks

    manifest = tiny_store.manifest
    costs = LinkCosts(300, 5.0)
    asked = []

    class Device:  # every call 50 ms: each round's best by the line then loses to an untimed one
        def ask(self, job):
            asked.append(len(job["executions"]))
            return [{f"{e['mode']}:{e['variant']}@{e['split']}": 50.0 for e in job["executions"]}]

    fit_on = calibrate.calibration_executions(manifest)
    args = (manifest, edge_profile, {0.01: costs}, {0.01: 2.0}, (0.01,), (1.0, 10.0), 0.0)
    timed, known, left = calibrate.time_shortlists(Device(), *args, {2.0: {}}, fit_on, 3)
    assert len(asked) >= 2 and left == {}  # the shortlist, then the plans' untimed bests
    assert untimed_picks(manifest, edge_profile, costs, 1e4, (1.0, 10.0), 0.0, timed[2.0], known) == []
    monkeypatch.setattr(calibrate, "MAX_ROUNDS", 0)  # no round: the untimed bests are named
    _, _, left = calibrate.time_shortlists(Device(), *args, {2.0: {}}, fit_on, 3)
    assert left[2.0] and all(key not in {e.key for e in fit_on} for key in left[2.0])


def test_the_router_candidates_run_a_step2_variant_whole_on_the_device(tiny_store, edge_profile):
    from pipeline.selection import ON_DEVICE
    from twostep.bench.strategies import device_candidates, router_candidates

    costs = LinkCosts(300, 5.0, device_overhead_ms=2.0, device_request_ms=1.0)
    manifest = tiny_store.manifest
    without_output = sorted(v.id for v in manifest.variants if "output" not in v.splits)
    assert without_output  # the tiny series' step-2 variants offer their splits only
    plain = device_candidates(manifest, edge_profile, 1.0, costs)
    planned = router_candidates(manifest, edge_profile, 1.0, costs)
    whole = {c.variant_id: c for c in planned if c.strategy == ON_DEVICE}
    assert sorted(whole) == without_output and len(planned) == len(plain) + len(without_output)
    # by the line: the profile's whole call plus the device's per-call overhead, once
    vid = without_output[0]
    profiled = edge_profile["variants"][vid]["head_ms"]["output"] * costs.device_slowdown(1.0)
    assert whole[vid].head_ms == pytest.approx(profiled + costs.device_overhead(1.0))
    timed = router_candidates(manifest, edge_profile, 1.0, costs, {(vid, "output"): 7.5})
    assert next(c for c in timed if c.strategy == ON_DEVICE).head_ms == 7.5  # the device's own time


def test_the_step1_call_reduction_is_judged_against_its_mac_reduction(tiny_store):
    from twostep.bench.report import call_reduction

    manifest = tiny_store.manifest
    manifest = manifest.model_copy(update={"variants": [
        manifest.base_variant.model_copy(update={"id": "base", "macs": 600}),
        manifest.base_variant.model_copy(update={"id": "s1", "macs": 100})]})

    def document(base_ms, step1_ms):
        return {"base": "base", "step1": "s1", "calibration": {"device_at_gap": {
            "2.1": {"measured": {"device:base@output": base_ms, "device:s1@output": step1_ms}},
            "135.0": {"measured": {"device:base@output": 9.0, "device:s1@output": 3.0}}}}}

    met = call_reduction(document(6.0, 1.2), manifest)  # 5x faster for 6x fewer MACs
    assert met["met"] and met["mac_reduction"] == 6.0 and met["target"] == pytest.approx(4.2)
    assert [p["gap_ms"] for p in met["at_gaps"]] == [2.1, 135.0]  # judged at the shortest gap
    assert not call_reduction(document(6.0, 2.0), manifest)["met"]  # 3x: under 0.7 x 6
    assert call_reduction({**document(6.0, 1.2), "step1": None}, manifest) is None
