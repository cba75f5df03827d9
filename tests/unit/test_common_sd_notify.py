"""hostkv.common.sd_notify against a real AF_UNIX datagram socket (what systemd listens on)."""

import socket

from hostkv.common import sd_notify


def test_sends_one_datagram_of_lines(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert sd_notify.notify("READY=1", "STATUS=serving 2 guests")
    assert server.recv(4096) == b"READY=1\nSTATUS=serving 2 guests"


def test_abstract_socket(monkeypatch):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0hostkv-test-notify-%d" % id(server))
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + server.getsockname()[1:].decode())
    assert sd_notify.notify("STATUS=x")
    assert server.recv(100) == b"STATUS=x"


def test_without_manager_or_when_gone(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody"))
    assert sd_notify.notify("READY=1") is False
