"""bench/process_cpu.py: CPU seconds by role, read from /proc, process by process."""

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from process_cpu import by_role, role_of, spent  # noqa: E402

BUSY = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass\n"


def test_roles_come_from_ray_process_titles():
    assert role_of("ray::ServeReplica:twostep-tail:EdgeTail") == "tail"
    assert role_of("/usr/lib/haproxy -f /tmp/x.cfg") == "ingress"
    assert role_of("ray::LinkBoard.observe") == "board"
    assert role_of("ray::ServeController.listen_for_change") == "controller"
    assert role_of("/usr/bin/python3 -m something") == "other"


def test_a_busy_process_is_counted_and_one_that_ended_takes_nothing_away():
    before = by_role()
    child = subprocess.Popen([sys.executable, "-c", BUSY + "time.sleep(30)\n"])
    try:
        time.sleep(1.0)  # it burns 0.4 s of CPU, then sleeps
        during = by_role()
        assert str(child.pid) in during and during[str(child.pid)][0] == "other"
        used = spent(before, during)
        assert used["other"] >= 0.35
        assert used["host"] >= used["other"] * 0.9
    finally:
        child.kill()
        child.wait()
    after = by_role()
    assert str(child.pid) not in after
    assert all(seconds >= 0 for seconds in spent(during, after).values())
    own = spent(before, after)["devices"]  # this process: the test's own (small) work
    assert 0 <= own < 5
