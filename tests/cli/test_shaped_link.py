import subprocess
import sys

import pytest

from twostep.shaped_link import ShapedLink, available

pytestmark = pytest.mark.skipif(not available(), reason="network namespaces not permitted here")

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 9000)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); n = 0
while True:
    d = c.recv(65536)
    if not d: break
    n += len(d)
c.sendall(str(n).encode()); c.close()
"""

CLIENT = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], 9000)); t = time.perf_counter()
s.sendall(b"x" * int(sys.argv[2])); s.shutdown(socket.SHUT_WR)
n = int(s.recv(64)); print(n, time.perf_counter() - t)
"""


def test_the_link_is_really_shaped_and_removed_afterwards():
    with ShapedLink(2e6) as link:
        server = subprocess.Popen(link.command(link.edge, [sys.executable, "-c", SERVER, link.edge_ip]),
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        out = subprocess.run(link.command(link.device, [sys.executable, "-c", CLIENT, link.edge_ip,
                                                        "100000"]),
                             capture_output=True, text=True, timeout=30, check=True).stdout.split()
        server.wait(timeout=10)
        received, seconds = int(out[0]), float(out[1])
        assert received == 100000
        mbit_s = received * 8 / seconds / 1e6
        assert 1.2 < mbit_s < 2.3  # 2 Mbit/s shaped; TCP/IP headers take a few percent
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert link.device in names
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert link.device not in names and link.edge not in names


def test_bad_bandwidth_is_refused():
    with pytest.raises(ValueError, match="bandwidth"):
        ShapedLink(0)


ECHO = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 9002)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    got = 0
    while got < 1000:
        d = c.recv(65536)
        if not d: sys.exit()
        got += len(d)
    c.sendall(b"k")
"""

TIMED = """
import socket, sys, time
host, burst = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, 9002)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for prime in (False, True, False, True):
    time.sleep(0.5)  # the buckets refill
    t = time.perf_counter()
    if prime:
        u.sendto(bytes(burst - 42), (host, 9003))
    s.sendall(b"x" * 1000); s.recv(1)
    print(prime, (time.perf_counter() - t) * 1000)
"""


def test_a_filler_frame_spends_the_burst_so_a_small_message_pays_its_bytes():
    with ShapedLink(1e5) as link:
        server = subprocess.Popen(link.command(link.edge, [sys.executable, "-c", ECHO, link.edge_ip]),
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        lines = subprocess.run(link.command(link.device, [sys.executable, "-c", TIMED, link.edge_ip,
                                                          str(link.burst_bytes)]),
                               capture_output=True, text=True, timeout=30, check=True).stdout.splitlines()
        server.kill()
    times = {"True": [], "False": []}
    for line in lines:
        prime, ms = line.split()
        times[prime].append(float(ms))
    expected = (1000 + 66) * 8 / 1e5 * 1000  # 85 ms: the payload and one segment's headers
    assert max(times["False"]) < 0.4 * expected  # tbf's burst lets it through at line rate
    assert all(0.8 * expected < ms < 1.6 * expected for ms in times["True"])
