"""The two-node test cluster looks at the head's ports before starting Ray on them (no Ray here)."""

import socket

import pytest

from twostep.local_cluster import PortTaken, TwoNodeCluster
from twostep.ports import free_port, is_free


def test_is_free_sees_a_listening_socket():
    port = free_port()
    assert is_free(port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert not is_free(port)
    assert is_free(port)


@pytest.mark.parametrize("which", ["port", "client_server_port"])
def test_a_taken_head_port_is_refused_before_any_node_starts(tmp_path, which):
    cluster = TwoNodeCluster(tmp_path / "hidden", log_dir=str(tmp_path))
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", getattr(cluster, which)))
            sock.listen()
            with pytest.raises(PortTaken, match=str(getattr(cluster, which))):
                cluster._start_nodes()
        assert cluster._procs == []  # nothing was started on the taken port
    finally:
        cluster.__exit__(None, None, None)
