"""The capacity model (serve/capacity.py) and `twostep capacity` on a measurement file."""

import dataclasses
import json
import math
from pathlib import Path

import pytest

from serve.capacity import FrameCosts, edge_plan, node_cores_of, per_replica_fps
from twostep.cli import main

ROOT = Path(__file__).resolve().parents[2]

COSTS = FrameCosts(replica_fps=500.0, tail_cpu_ms=2.4, ingress_cpu_ms=0.2, board_cpu_ms=0.05,
                   fixed_ms=10.0)  # a replica uses 1.2 cores flat out: 3 on a node of 4


def test_a_replica_takes_what_keeps_its_queue_p99_under_the_target():
    take = per_replica_fps(COSTS, p99_ms=100.0)
    # M/M/1: the time in a replica's queue has p99 ln(100) / (mu - lambda); here 90 ms of it
    assert math.log(100) / (COSTS.replica_fps - take) * 1000 == pytest.approx(90.0)
    assert 0 < take < COSTS.replica_fps == 500.0
    assert per_replica_fps(COSTS, p99_ms=1000.0) > take  # a looser target: more a replica
    assert per_replica_fps(COSTS, p99_ms=10.0) == 0.0  # nothing left for the queue
    assert per_replica_fps(COSTS, p99_ms=19.0) == 0.0  # a replica too slow for the target


def test_replicas_and_nodes_cover_the_offered_load():
    plan = edge_plan(COSTS, devices=1000, fps=10.0, p99_ms=100.0, node_cores=4)
    take = per_replica_fps(COSTS, 100.0)
    assert plan.offered_fps == 10_000
    assert plan.replicas == math.ceil(10_000 / take)
    assert plan.replicas * take >= 10_000 > (plan.replicas - 1) * take
    assert plan.per_node == 3 and plan.nodes == math.ceil(plan.replicas / 3)
    assert plan.bound == "p99"
    assert plan.ingress_cores == pytest.approx(2.0) and plan.board_load == pytest.approx(0.5)
    assert plan.limits == ()


def test_sessions_per_replica_can_set_the_count():
    plan = edge_plan(COSTS, devices=10_000, fps=0.1, p99_ms=100.0, node_cores=4, max_sessions=256)
    assert plan.replicas == math.ceil(10_000 / 256) and plan.bound == "sessions"
    http = edge_plan(COSTS, devices=10_000, fps=0.1, p99_ms=100.0, node_cores=4)
    assert http.replicas < plan.replicas and http.bound == "p99"


def test_shared_limits_are_named_not_scaled():
    plan = edge_plan(COSTS, devices=10_000, fps=10.0, p99_ms=100.0, node_cores=4, ingress_cores=8)
    assert plan.replicas is not None
    assert [line.split(":")[0] for line in plan.limits] == ["ingress", "link board"]
    assert "20.0 cores" in plan.limits[0] and "5.0x" in plan.limits[1]


def test_an_unreachable_target_gives_no_count():
    plan = edge_plan(COSTS, devices=10, fps=1.0, p99_ms=5.0, node_cores=4)
    assert plan.replicas is None and plan.nodes is None


@pytest.mark.parametrize("kwargs, message", [
    ({"devices": 0}, "devices"), ({"fps": 0.0}, "fps"), ({"p99_ms": math.nan}, "p99_ms"),
    ({"node_cores": 0}, "node_cores"), ({"max_sessions": 0}, "max_sessions"),
])
def test_bad_arguments_are_named(kwargs, message):
    given = {"devices": 10, "fps": 1.0, "p99_ms": 100.0, "node_cores": 4} | kwargs
    with pytest.raises(ValueError, match=message):
        edge_plan(COSTS, **given)


def test_costs_are_checked():
    with pytest.raises(ValueError, match="tail_cpu_ms"):
        FrameCosts(100.0, 0.0, 0.1, 0.1, 1.0)
    with pytest.raises(ValueError, match="replica_fps"):
        FrameCosts(math.inf, 1.0, 0.1, 0.1, 1.0)
    with pytest.raises(ValueError, match="fixed_ms"):
        FrameCosts(100.0, 1.0, 0.1, 0.1, -1.0)
    assert COSTS.replica_cores == pytest.approx(1.2) and COSTS.core_fps == pytest.approx(1000 / 2.4)
    assert node_cores_of({"CPU": 4.0, "edge": 1.0}) == 4
    with pytest.raises(ValueError, match="0 CPUs"):
        node_cores_of({"edge": 1.0})


def _measurement(tmp_path):
    costs = {"replica_fps": 500.0, "tail_cpu_ms": 2.4, "ingress_cpu_ms": 0.2, "board_cpu_ms": 0.05,
             "fixed_ms": 10.0, "core_fps": 416.7}  # derived figures in the file are ignored
    slower = costs | {"replica_fps": 250.0}
    path = tmp_path / "capacity.json"
    path.write_text(json.dumps({"date": "2026-12-05", "cores": 2, "series": [
        {"series": "runs/demo/series", "costs": {"http": costs, "stream": costs}},
        {"series": "runs/other/series", "costs": {"http": slower}}]}))
    return path


def test_the_command_plans_from_the_measured_costs(tmp_path, capsys):
    path = _measurement(tmp_path)
    assert main(["capacity", str(path), "--transport", "http", "--devices", "1000",
                 "--fps", "10", "--node-cores", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["series"] == "runs/demo/series" and out["costs"]["replica_fps"] == 500.0
    expected = edge_plan(COSTS, 1000, 10.0, 100.0, 4)
    assert out["plans"][0]["replicas"] == expected.replicas and out["plans"][0]["nodes"] == expected.nodes


def test_the_command_reads_the_edge_node_type_and_prints_a_table(tmp_path, capsys):
    path = _measurement(tmp_path)
    assert main(["capacity", str(path), "--series", "other", "--transport", "http", "--cluster-config",
                 str(ROOT / "cluster.yaml"), "--devices", "1000,10000", "--fps", "1,10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("runs/other/series, http:") and "edge nodes of 4 cores" in lines[0]
    assert lines[1].split()[:3] == ["devices", "fps", "frames/s"]
    rows = [line.split() for line in lines[2:6]]
    assert [(r[0], r[1]) for r in rows] == [("1,000", "1"), ("1,000", "10"),
                                            ("10,000", "1"), ("10,000", "10")]
    assert all(len(r) == 10 and r[5] == "6" for r in rows)  # 4 cores / 0.6 a replica
    assert any("link board" in line for line in lines[6:])  # 100,000 reports/s at 0.05 ms: 5 cores


@pytest.mark.parametrize("argv, message", [
    (["--series", "nothing"], "matches no measured series"),
    (["--series", "other", "--transport", "stream"], "has no stream measurement"),
    (["--fps", "0"], "--fps takes numbers > 0"),
    (["--devices", "many"], "--devices takes comma-separated numbers"),
    (["--node-type", "gpu"], "--node-type 'gpu' is not a worker node type"),
    (["--p99-ms", "-5"], "--p99-ms must be a number > 0, got -5"),
    (["--queue-factor", "0.5"], "--queue-factor must be >= 1"),
])
def test_the_command_names_a_bad_value(tmp_path, capsys, argv, message):
    assert main(["capacity", str(_measurement(tmp_path)), *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_command_names_missing_costs(tmp_path, capsys):
    path = tmp_path / "capacity.json"
    path.write_text(json.dumps({"series": [{"series": "s", "costs": {"http": {"replica_fps": 1.0}}}]}))
    assert main(["capacity", str(path), "--transport", "http", "--node-cores", "4"]) == 2
    err = capsys.readouterr().err
    assert "s's http costs lack tail_cpu_ms, ingress_cpu_ms, board_cpu_ms, fixed_ms" in err


def test_a_replica_wider_than_a_node_is_named():
    wide = dataclasses.replace(COSTS, tail_cpu_ms=12.0)  # 6 cores flat out
    plan = edge_plan(wide, devices=100, fps=1.0, p99_ms=100.0, node_cores=4)
    assert plan.per_node == 1 and "6.00 cores flat out, more than a node's 4" in plan.limits[0]


def test_the_command_names_a_missing_file(tmp_path, capsys):
    assert main(["capacity", str(tmp_path / "none.json")]) == 2
    assert "bench/bench_capacity.py writes one" in capsys.readouterr().err


def test_a_measured_queue_factor_leaves_a_replica_less():
    stretched = dataclasses.replace(COSTS, queue_factor=2.0)
    assert per_replica_fps(stretched, 100.0) < per_replica_fps(COSTS, 100.0)
    assert stretched.queue_p99_ms(per_replica_fps(stretched, 100.0)) == pytest.approx(90.0)
    assert COSTS.queue_p99_ms(COSTS.replica_fps) == math.inf
    with pytest.raises(ValueError, match="queue_factor"):
        dataclasses.replace(COSTS, queue_factor=0.5)
