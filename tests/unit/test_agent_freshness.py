"""Never present old data as current: status agrees with get --fresh (10.1), a snapshot the host
cannot deliver makes the guest's data stale (10.2, with the real HostSession), the agent tells
systemd its state (10.7).  Agent in-process on the fake port (test_agent_support.py); the CLI
is the real wrapper in a subprocess."""

import json
import os
import socket
import time

import pytest

from hostkv.agent import cli
from hostkv.agent.model import Record
from hostkv.agent.publish import Publisher

from test_agent_support import Rig, wait_for
from test_cli import hostkv, rig  # noqa: F401 - rig: the connected agent fixture

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_status_never_contradicts_get_fresh_when_the_agent_is_dead(tmp_path):
    """The lab's case: files left by a dead agent say fresh, received 3 years ago."""
    run = tmp_path / "run"
    pub = Publisher(str(run))
    pub.prepare()
    pub.publish(Record(7, "hv1", 3, {"host.hostname": "hv1"}, time.time() - 96113507.5, False, True))
    p = hostkv(run, "get", "--fresh", "host.hostname")
    assert p.returncode == 5 and b"the agent is not running" in p.stderr
    p = hostkv(run, "status")
    out = p.stdout.decode()
    assert p.returncode == 3
    assert "connected:  no (the agent is not running)" in out and "connected:  yes" not in out
    assert "data:       STALE: the agent is not running" in out
    assert "1112 d 10 h ago" in out, out          # human units, not "96113507.5 s"
    info = json.loads(hostkv(run, "status", "--json").stdout)
    assert (info["fresh"], info["stale"], info["connected"]) == (False, True, False)
    assert info["stale_reason"] == "the agent is not running" and info["stale_published"] is False
    doc = json.loads(hostkv(run, "list", "--json").stdout)
    assert (doc["fresh"], doc["stale"], doc["connected"]) == (False, True, False)


def test_format_age_is_for_people():
    assert cli.format_age(4.25) == "4.2 s"
    assert cli.format_age(192) == "3 min 12 s"
    assert cli.format_age(5 * 3600 + 130) == "5 h 2 min"
    assert cli.format_age(96113507.5) == "1112 d 10 h"
    assert cli.format_age(-90).endswith("in the future (the clock changed?)")


def test_status_json_carries_what_the_agent_knows_and_agrees_with_get(rig):
    run = rig.run_dir
    info = json.loads(hostkv(run, "status", "--json").stdout)
    for field in ("stats", "in_sync", "version", "link", "port", "timings", "host_protocol_version",
                  "pid", "seq", "keys", "received_at", "age"):
        assert field in info, field
    assert info["fresh"] and info["connected"] and info["in_sync"] and info["stats"]["snapshots"] >= 1
    got = json.loads(hostkv(run, "get", "host.hostname", "--json").stdout)
    assert got == dict(got, key="host.hostname", value="hv1.example", fresh=True, stale=False,
                       stale_reason=None, seq=1, host_id="hv1")
    out = hostkv(run, "status").stdout.decode()
    assert "data:       fresh" in out and "connected:  yes" in out
    rig.host.disconnect()
    rig.wait_published(lambda d: d["stale"], "stale after the host left")
    info = json.loads(hostkv(run, "status", "--json").stdout)
    assert (info["fresh"], info["connected"], info["stale_reason"]) == (False, False, "host not connected")
    p = hostkv(run, "get", "--fresh", "host.hostname")
    assert p.returncode == 5 and b"host not connected" in p.stderr


def test_undeliverable_snapshot_marks_the_data_stale_until_the_next_one(rig, capsys):
    """The real HostSession refuses to push 300 keys and sends ``snapshot-undeliverable``."""
    run = rig.run_dir
    too_many = dict(("host.k%03d" % i, "v") for i in range(300))
    rig.host.set(values=too_many)
    doc = rig.wait_published(lambda d: d["stale"], "stale after snapshot-undeliverable")
    assert doc["values"] == {"host.hostname": "hv1.example", "vm.role": "db"}    # the old ones ...
    assert doc["connected"] is True and "cannot deliver" in doc["stale_reason"]  # ... never current
    assert "256" in doc["stale_reason"], doc["stale_reason"]
    p = hostkv(run, "get", "--fresh", "vm.role")
    assert p.returncode == 5 and b"cannot deliver" in p.stderr
    info = json.loads(hostkv(run, "status", "--json").stdout)
    assert info["fresh"] is False and info["undeliverable"] and "cannot deliver" in info["stale_reason"]
    rig.host.push()                                  # told again: logged once all the same
    rig.host.set(values=dict(too_many, **{"host.k999": "x"}))
    sent = rig.agent.stats["snapshots"]
    p = hostkv(run, "status", "--json")              # the agent has handled all of it by now
    assert json.loads(p.stdout)["stats"]["snapshots"] == sent
    time.sleep(0.3)
    assert capsys.readouterr().err.count("cannot deliver this guest's current values") == 1
    rig.host.disconnect()                            # a reconnect: the host refuses again
    rig.wait_published(lambda d: d["stale_reason"] == "host not connected", "host away")
    rig.host.connect()
    doc = rig.wait_published(lambda d: d["connected"] and "cannot deliver" in (d["stale_reason"] or ""),
                             "still undeliverable after a reconnect")
    assert doc["stale"] is True
    rig.host.set(values={"host.hostname": "hv1.example", "vm.role": "web"})
    doc = rig.wait_published(lambda d: not d["stale"], "fresh after a deliverable snapshot")
    assert doc["values"]["vm.role"] == "web" and doc["stale_reason"] is None
    assert json.loads(hostkv(run, "status", "--json").stdout)["undeliverable"] is None


def test_agent_tells_systemd_its_state(tmp_path, monkeypatch):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    r = Rig(tmp_path)
    got = []

    def until(text):
        while not any(text in m for m in got):
            got.append(sock.recv(4096).decode())
        return got[-1]

    r.start()
    try:
        assert "READY=1" in until("READY=1") and "STATUS=waiting for the host" in got[-1]
        r.host.connect()
        until("STATUS=connected to host; 2 keys")
        r.host.disconnect()
        until("STATUS=waiting for the host")
    finally:
        r.stop()
    until("STOPPING=1")
    sock.close()


def test_agent_unit_is_type_notify():
    with open(os.path.join(REPO, "packaging", "systemd", "hostkv-agent.service")) as f:
        lines = [l.strip() for l in f]
    assert "Type=notify" in lines and "NotifyAccess=main" in lines


def test_read_only_socket_serves_readers_and_refuses_the_rest(rig):
    import stat
    from hostkv.agent import client
    ro = os.path.join(rig.run_dir, "agent-ro.sock")
    assert stat.S_IMODE(os.stat(ro).st_mode) == 0o666
    assert stat.S_IMODE(os.stat(rig.agent.cfg.socket).st_mode) == 0o600
    assert client.request(ro, {"op": "status"}, 5)["ok"]
    assert client.request(ro, {"op": "get", "key": "vm.role"}, 5)["value"] == "db"
    assert client.request(ro, {"op": "watch", "since": 0}, 5)["seq"] == 1
    for req in ({"op": "get", "key": "vm.role", "live": True}, {"op": "resync"}):
        reply = client.request(ro, req, 5)
        assert reply["ok"] is False and reply["error"] == "not-permitted", reply
    assert rig.host.ops("get") == []            # nothing reached the host
    p = hostkv(rig.run_dir, "--socket", ro, "get", "--live", "vm.role")
    assert p.returncode == 6 and b"permission denied" in p.stderr
