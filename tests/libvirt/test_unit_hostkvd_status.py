"""Issue 10.6: `hostkvctl status` against the real hostkvd following libvirt's test driver
(test:///<file>): libvirt's state with a time, column headers, last push as a time, and every
domain whose hostkv channel cannot be served, with why.  (The libvirt-down view with a real
libvirtd is in test_libvirtd_restart.py.)"""
import json
import os
import re
import subprocess
import sys

from tests.harness import PYTHONPATH
from tests.harness.fake_port import FakePort
from tests.harness.hostkvd_proc import HostkvdProcess

DOMAIN = ("<domain type='test'><name>%s</name><uuid>%s</uuid><memory>8192</memory>"
          "<os><type>hvm</type></os><devices>%s</devices></domain>")
UNIX = ("<channel type='unix'><source mode='bind' path='%s'/>"
        "<target type='virtio' name='org.hostkv.0'/></channel>")
PTY = "<channel type='pty'><target type='virtio' name='org.hostkv.0'/></channel>"


def test_status_shows_libvirt_state_unusable_channels_and_times(tmp_path):
    port = FakePort(tmp_path / "ok1.sock")
    node = tmp_path / "node.xml"
    node.write_text("<node>%s%s</node>" % (
        DOMAIN % ("ok1", "11111111-2222-3333-4444-555555555555", UNIX % port.path),
        DOMAIN % ("pty1", "11111111-2222-3333-4444-666666666666", PTY)))
    uri = "test://" + str(node)
    d = HostkvdProcess(tmp_path, host_id="status-test", extra_args=["--connect", uri])
    d.start()
    try:
        g = port.accept(timeout=20)
        g.frame()
        g.send({"op": "hello", "id": 1, "versions": [1], "agent": "t"})
        g.frame_where(lambda f: f.get("op") == "hello")
        d.wait_log("domain pty1: channel org.hostkv.0 is type='pty'")
        env = dict(os.environ, PYTHONPATH=PYTHONPATH)
        argv = [sys.executable, "-m", "hostkv.hostkvctl", "--connect", uri, "--control-socket", d.control_path]
        res = subprocess.run(argv + ["status"], capture_output=True, text=True, timeout=30, env=env)
        assert res.returncode == 0, res
        out = res.stdout
        when = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
        assert re.search(r"^libvirt %s: up since %s$" % (re.escape(uri), when), out, re.M), out
        assert "status: serving 1 guest; libvirt up; 1 unusable channel(s)" in out
        header = [l for l in out.splitlines() if l.strip().startswith("DOMAIN") and "LAST PUSH" in l]
        assert header and header[0].split() == ["DOMAIN", "STATE", "GENERATION", "PUSHES", "CONNECTS",
                                                "LAST", "PUSH", "PATH"]
        row = [l for l in out.splitlines() if l.strip().startswith("ok1 ")]
        assert row and " serving " in row[0] and re.search(when, row[0]), out
        assert not re.search(r"\b1[6-9]\d{8}(\.\d+)?\b", out), "an epoch in the output: " + out
        assert re.search(r"^unusable channels: 1$", out, re.M)
        assert re.search(r"^  pty1\s+channel org.hostkv.0 is type='pty', only 'unix' can be served$", out, re.M), out
        doc = json.loads(subprocess.run(argv + ["status", "--json"], capture_output=True, text=True,
                                        timeout=30, env=env).stdout)
        assert doc["source"]["state"] == "up" and doc["source"]["unusable"][0]["domain"] == "pty1"
    finally:
        d.stop()
        port.close()
