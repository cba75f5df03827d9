"""The Cobbler test server itself (tests/harness/cobbler_server.py): isolated, and clean after stop.

Uses its own short-lived CobblerServer (not the session one) so it can check what stop() leaves.
"""

import os
import urllib.error
import urllib.request

import pytest

from tests.harness.cobbler_server import CobblerServer

pytestmark = pytest.mark.cobbler


def _mounts():
    with open("/proc/self/mountinfo") as f:
        return f.read()


def test_server_is_isolated_and_leaves_nothing_behind():
    mounts_before = _mounts()
    server = CobblerServer()
    try:
        server.start()
        pids = [server.holder.pid, server.cobblerd.pid, server.front.pid]
        workdir = server.workdir
        # a real cobblerd behind the front, with the settings the harness wrote
        assert server.xmlrpc.ping() is True
        settings = server.xmlrpc.get_settings()
        assert settings["http_port"] == server.http_port and settings["manage_tftpd"] is False
        assert "Cobbler 3.3.10" in server.cli(["version"]).stdout
        # writes inside the namespace stay there
        marker = "/etc/cobbler/hostkv-isolation-marker"
        with open(server.path(marker), "w") as f:
            f.write("x")
        assert server.run(["cat", marker]).stdout == "x"
        assert not os.path.exists(marker) and not os.path.exists("/etc/cobbler")
        assert _mounts() == mounts_before
        # the front: static files under /var/www/cobbler, 404 outside, Cobbler's svc app
        os.makedirs(server.path("/var/www/cobbler/pub/t"), exist_ok=True)
        with open(server.path("/var/www/cobbler/pub/t/f.txt"), "w") as f:
            f.write("served")
        with urllib.request.urlopen(server.url + "/cobbler/pub/t/f.txt", timeout=10) as resp:
            assert resp.read() == b"served"
        for escape in ("/cobbler/../../../etc/passwd", "/cobbler/%2e%2e/%2e%2e/%2e%2e/etc/passwd"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(server.url + escape, timeout=10)
            assert err.value.code == 404
        with urllib.request.urlopen(server.url + "/cblr/svc/op/settings", timeout=10) as resp:
            assert b'"xmlrpc_port"' in resp.read()
        old = server.cobblerd.pid
        server.restart()
        assert server.cobblerd.pid != old and server.xmlrpc.ping() is True
        assert not os.path.exists("/proc/%d" % old) or _zombie(old)
        pids.append(server.cobblerd.pid)
    finally:
        server.stop()
    for pid in pids:
        assert not os.path.exists("/proc/%d" % pid) or _zombie(pid), pid
    assert not os.path.exists(workdir)
    assert _mounts() == mounts_before


def _zombie(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True
