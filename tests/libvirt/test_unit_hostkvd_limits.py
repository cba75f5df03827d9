"""Issue 10.2, the host's view: a change that would put a served guest over a protocol limit.

The real hostkvd follows libvirt's test driver (``test:///<file>``: a running domain with the
hostkv channel and 20 vm.* keys in its metadata, exactly as libvirt hands it out); QEMU's side of
the channel is a FakePort.  Host keys 230 (+ host.hostname, host.fqdn) + 20 vm keys = 252: five
more host keys break the 256-key limit for that guest only.
"""
import io
import json
import os
import subprocess
import sys

import pytest

from hostkv.common import domain_xml
from tests.harness import PYTHONPATH
from tests.harness.fake_port import FakePort
from tests.harness.hostkvd_proc import HostkvdProcess

UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"


def node_xml(sock):
    md = domain_xml.metadata_element({"vm.k%02d" % i: "v" for i in range(20)}, namespaced=True)
    return ("<node><domain type='test'><name>big1</name><uuid>%s</uuid><memory>8192</memory>"
            "<os><type>hvm</type></os><metadata>%s</metadata><devices><channel type='unix'>"
            "<source mode='bind' path='%s'/><target type='virtio' name='org.hostkv.0'/></channel>"
            "</devices></domain></node>" % (UUID, md, sock))


@pytest.fixture
def served(tmp_path):
    port = FakePort(tmp_path / "big1.sock")
    node = tmp_path / "node.xml"
    node.write_text(node_xml(port.path))
    uri = "test://" + str(node)
    many = "".join("host.k%03d = v\n" % i for i in range(230))
    d = HostkvdProcess(tmp_path, host_id="limit-test", config_text="[host]\n" + many,
                       extra_args=["--connect", uri])
    d.start()
    g = port.accept(timeout=20)
    first = g.frame()
    assert len(first["values"]) == 252 and first["values"]["vm.k00"] == "v"
    g.send({"op": "hello", "id": 1, "versions": [1], "agent": "t"})
    g.frame_where(lambda f: f.get("op") == "hello")
    yield d, g, uri
    d.stop()
    port.close()


def hostkvctl(d, uri, *args):
    env = dict(os.environ, PYTHONPATH=PYTHONPATH)
    return subprocess.run([sys.executable, "-m", "hostkv.hostkvctl", "--connect", uri,
                           "--control-socket", d.control_path] + list(args),
                          capture_output=True, text=True, timeout=60, env=env)


def test_host_set_over_a_limit_is_refused_naming_the_guest(served):
    d, g, uri = served
    before = open(d.config_path).read()
    res = hostkvctl(d, uri, "host", "set", *["x%d=v" % i for i in range(5)])
    assert res.returncode == 1, res
    assert "big1" in res.stderr and "257 keys, the limit is 256" in res.stderr, res.stderr
    assert "nothing changed" in res.stderr and "pushed" not in res.stdout
    assert open(d.config_path).read() == before
    ok = hostkvctl(d, uri, "host", "set", "x0=v", "--json")       # 253: fine, and counted
    assert ok.returncode == 0 and json.loads(ok.stdout)["pushed"] == 1, ok
    assert g.frame_where(lambda f: f.get("op") == "snapshot")["values"]["host.x0"] == "v"


def test_vm_set_over_a_limit_is_refused_by_hostkvd_before_anything_is_written(served):
    d, _g, uri = served
    res = hostkvctl(d, uri, "vm", "set", "big1", *["more%d=v" % i for i in range(5)])
    assert res.returncode == 1, res
    assert "hostkvd: refused, nothing changed: it would put big1 over a limit" in res.stderr
    assert "257 keys, the limit is 256" in res.stderr
    assert hostkvctl(d, uri, "vm", "set", "big1", "more0=v").returncode == 0


def test_reload_over_a_limit_marks_the_guest_undeliverable_and_logs_once(served):
    d, g, uri = served
    with open(d.config_path, "a") as f:
        f.write("".join("host.x%d = v\n" % i for i in range(5)))
    mark = d.log_size()
    res = hostkvctl(d, uri, "reload", "--json")
    reply = json.loads(res.stdout)
    assert res.returncode == 0 and reply["pushed"] == 0, res
    assert "undeliverable to 1 guest(s)" in reply["message"] and "big1" in reply["message"]
    err = g.frame_where(lambda f: f.get("op") == "error")
    assert err["code"] == "snapshot-undeliverable" and "id" not in err
    d.wait_log("big1: snapshot undeliverable", after=mark)
    hostkvctl(d, uri, "reload")
    assert d.log()[mark:].count("snapshot undeliverable") == 1          # once per guest and reason
    status = hostkvctl(d, uri, "status")
    assert "undeliverable: " in status.stdout and "257 keys, the limit is 256" in status.stdout, status.stdout
    line = [l for l in status.stdout.splitlines() if l.strip().startswith("big1")]
    assert line and "undeliverable" in line[0]
    # and back: removing the keys delivers again
    res = hostkvctl(d, uri, "host", "unset", *["x%d" % i for i in range(5)])
    assert res.returncode == 0 and "pushed to 1 guest(s)" in res.stdout, res
    assert len(g.frame_where(lambda f: f.get("op") == "snapshot")["values"]) == 252
