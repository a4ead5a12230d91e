"""`twostep serve --check` and `twostep device` argument handling, without starting anything."""

import json
import socket

import numpy as np
import pytest

from twostep.cli import main


def test_serve_check_prints_the_resolved_arguments(tiny_store, capsys):
    code = main(["serve", str(tiny_store.directory), "--check", "--link-bandwidth-bps", "1mbit",
                 "--tail-replicas", "2", "--probe-bytes", "1000", "--placement", "local"])
    assert code == 0
    args = json.loads(capsys.readouterr().out)
    assert args["link_bandwidth_bps"] == 1e6 and args["tail_replicas"] == 2
    assert args["probe_bytes"] == 1000 and args["placement"] == "local"


def test_serve_refuses_bad_arguments(tiny_store, tmp_path, capsys):
    for argv, named in ((["--accuracy-floor", "2"], "accuracy_floor must be in [0.0, 1.0], got '2'"),
                        (["--link-bandwidth-bps", "fast"], "cannot read bandwidth 'fast'"),
                        (["--link-bandwidth-bps", "5"], "give a unit"),
                        (["--accuracy-floor", "0.8", "--latency-budget-ms", "50"], "not both"),
                        (["--port", "0"], "--port"), (["--tail-max-replicas", "0"], "tail_max_replicas"),
                        (["--baselines", "--tail-batch-size", "8"], "tail_batch_size")):
        assert main(["serve", str(tiny_store.directory), "--check", *argv]) == 2, argv
        assert named in capsys.readouterr().err, argv
    with pytest.raises(SystemExit) as exit_info:  # a flag that is no AppArgs field
        main(["serve", str(tiny_store.directory), "--check", "--nonsense", "1"])
    assert exit_info.value.code == 2 and "--nonsense" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--check"]) == 2
    assert "no model series" in capsys.readouterr().err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_device_reports_an_unreachable_edge(tmp_path, capsys):
    image = tmp_path / "x.npy"
    np.save(image, np.zeros((1, 32, 32), np.uint8))
    url = f"http://127.0.0.1:{_closed_port()}"
    # an edge that does not answer is a runtime failure (1); bad arguments are usage errors (2)
    assert main(["device", "classify", str(image), "--url", url, "--timeout-s", "2"]) == 1
    assert "cannot reach" in capsys.readouterr().err
    assert main(["device", "classify", str(tmp_path / "missing.png"), "--url", url]) == 2
    assert main(["device", "classify", str(image), "--url", url, "--variant", "v"]) == 2
    assert main(["device", "plan", "--url", "ftp://x"]) == 2
