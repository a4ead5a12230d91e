"""bench/process_cpu.py: CPU seconds by role, read from /proc, process by process."""

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from process_cpu import by_role, role_of, spent  # noqa: E402

BUSY = ("import sys, time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass\n"
        "print('burnt', flush=True)\ntime.sleep(30)\n")


def test_roles_come_from_ray_process_titles():
    assert role_of("ray::ServeReplica:twostep-tail:EdgeTail") == "tail"
    assert role_of("/usr/lib/haproxy -f /tmp/x.cfg") == "ingress"
    assert role_of("ray::LinkBoard.observe") == "board"
    assert role_of("ray::ServeController.listen_for_change") == "controller"
    assert role_of("/usr/bin/python3 -m something") == "other"


def test_a_busy_process_is_counted_and_one_that_ended_takes_nothing_away():
    before = by_role()
    child = subprocess.Popen([sys.executable, "-c", BUSY], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "burnt"  # 0.4 s of CPU spent, now asleep
        during = by_role()
        assert during[str(child.pid)][0] == "other" and during[str(child.pid)][1] >= 0.35
        used = spent(before, during)
        assert used["other"] >= 0.35
        assert used["host"] >= 0.35
    finally:
        child.kill()
        child.wait()
    after = by_role()
    assert str(child.pid) not in after
    # the ended child's time leaves with it: "other" since `before` is the rest of "other"
    child_s = during[str(child.pid)][1]
    rest = used["other"] - child_s + spent(during, after).get("other", 0.0)
    assert spent(before, after).get("other", 0.0) == pytest.approx(rest, abs=0.05)
