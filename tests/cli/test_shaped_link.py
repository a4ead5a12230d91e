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
