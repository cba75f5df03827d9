"""Fast unit tests of hostkvctl: arguments, exit codes, output; libvirt = test:///default, and a
tiny stand-in for hostkvd's control socket (the real one is exercised by the other libvirt tests)."""
import io
import json
import os
import socket
import threading

import libvirt
import pytest

from hostkv.common import entries
from hostkv.hostkvctl import cli

URI = "test:///default"


@pytest.fixture(autouse=True, scope="module")
def keep_test_driver():
    """test:///default forgets its state when its last connection closes: hold one open."""
    conn = libvirt.open(URI)
    yield conn
    conn.close()


def run(args, control=None):
    out, err = io.StringIO(), io.StringIO()
    argv = ["--connect", URI] + (["--control-socket", control] if control else []) + args
    code = cli.main(argv, out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def fake_hostkvd(tmp_path):
    """A control socket answering like hostkvd; records the requests."""
    path = str(tmp_path / "ctl.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    requests = []

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                req = json.loads(data)
                requests.append(req)
                if req["op"] == "status":
                    reply = {"ok": True, "status": {
                        "server": "hostkvd/x", "pid": 1, "host_id": "hid", "config": "/c",
                        "host_values": {"host.hostname": "h1"},
                        "channels": [{"label": "web1", "state": "connected", "generation": 5, "pushes": 2,
                                      "connects": 1, "path": "/p"}]}}
                elif req["op"] == "host-unset" and "host.nope" in req["keys"]:
                    reply = {"ok": False, "error": "not set in /c: host.nope"}
                else:
                    reply = {"ok": True, "message": "reloaded; pushed to 1 guest(s)"}
                conn.sendall(json.dumps(reply).encode() + b"\n")

    threading.Thread(target=serve, daemon=True).start()
    yield path, requests
    srv.close()


def test_key_scoping_and_validation():
    assert cli.parse_assignments(["role=web", "vm.x=a=b", "e="], "vm") == {
        "vm.role": "web", "vm.x": "a=b", "vm.e": ""}
    assert cli.parse_assignments(["rack=r1"], "host") == {"host.rack": "r1"}
    for bad in (["novalue"], ["host.x=1"], ["bad key=1"], ["k=" + "v" * 5000]):
        with pytest.raises(cli.Failure) as exc:
            cli.parse_assignments(bad, "vm")
        assert exc.value.code == cli.EXIT_USAGE


def test_status_and_host_keys_via_control_socket(fake_hostkvd):
    path, requests = fake_hostkvd
    code, out, _ = run(["status"], path)
    assert code == 0 and "host_id hid" in out and "web1" in out and "host.hostname = \"h1\"" in out
    code, out, _ = run(["status", "--json"], path)
    assert code == 0 and json.loads(out)["channels"][0]["label"] == "web1"
    code, out, _ = run(["host", "set", "rack=r12", "host.row=3"], path)
    assert code == 0 and requests[-1] == {"op": "host-set", "values": {"host.rack": "r12", "host.row": "3"}}
    code, _, err = run(["host", "unset", "nope"], path)
    assert code == cli.EXIT_FAILED and "not set" in err
    code, _, err = run(["host", "set", "vm.role=x"], path)
    assert code == cli.EXIT_USAGE


def test_daemon_unreachable_is_exit_3(tmp_path):
    code, _, err = run(["status"], str(tmp_path / "none.sock"))
    assert code == cli.EXIT_NO_DAEMON and "not running" in err


def test_vm_keys_on_test_driver():
    code, out, _ = run(["vm", "set", "test", "role=web", "tier=1"])
    assert code == 0 and "test: set (config, live)" in out
    code, out, _ = run(["vm", "get", "test"])
    assert out.splitlines() == ['vm.role = "web"  local', 'vm.tier = "1"  local', "policy: (host default)"]
    code, out, _ = run(["vm", "unset", "test", "tier"])
    assert code == 0
    code, out, _ = run(["vm", "get", "test", "--json", "--config"])
    assert json.loads(out)["values"] == {"vm.role": "web"}
    code, _, err = run(["vm", "unset", "test", "never"])
    assert code == cli.EXIT_FAILED and "vm.never" in err
    code, _, err = run(["vm", "get", "nosuch"])
    assert code == cli.EXIT_NO_LIBVIRT
    conn = libvirt.open(URI)
    try:   # other metadata of the domain is untouched
        dom = conn.lookupByName("test")
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, "<x>1</x>", "o", "urn:other", 0)
        run(["vm", "set", "test", "role=db"])
        assert dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, "urn:other", 0) == "<x>1</x>"
    finally:
        conn.close()


def test_enable_needs_domains_or_all():
    assert run(["enable"])[0] == cli.EXIT_USAGE
    assert run(["enable", "--all", "test"])[0] == cli.EXIT_USAGE
    code, _, err = run(["enable", "test"])       # a 'test' driver domain has no virtio: refused
    assert code == cli.EXIT_FAILED and "cannot enable hostkv on test" in err


def test_not_root_is_exit_5(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert run(["status"])[0] == cli.EXIT_NOT_ROOT


def test_one_value_rule_for_host_set_and_vm_set(fake_hostkvd):
    """A value XML cannot hold is refused the same way by both (exit 2, one message, nothing sent
    or written); CR survives vm set/get byte for byte."""
    path, requests = fake_hostkvd
    sent = len(requests)
    code_h, _, err_h = run(["host", "set", "motd=a\x01b"], path)
    code_v, _, err_v = run(["vm", "set", "test", "motd=a\x01b"])
    assert code_h == code_v == cli.EXIT_USAGE and len(requests) == sent
    assert err_h == ("hostkvctl: value of host.motd has U+0001 (a control character) at character 2; "
                     "%s\n" % entries.VALUE_RULE)
    assert err_v == err_h.replace("host.motd", "vm.motd")
    code, _, _ = run(["vm", "set", "test", "cr=x\r\ny\r", "blank=  "])
    assert code == 0
    code, out, _ = run(["vm", "get", "test", "--json"])
    assert {k: v for k, v in json.loads(out)["values"].items() if k in ("vm.cr", "vm.blank")} == \
        {"vm.cr": "x\r\ny\r", "vm.blank": "  "}
    run(["vm", "unset", "test", "cr", "blank"])


def _meta(conn_name="test"):
    from hostkv.common import domain_xml
    conn = libvirt.open(URI)
    try:
        from hostkv.hostkvctl import vm_keys
        return vm_keys.read_meta(conn.lookupByName(conn_name), libvirt.VIR_DOMAIN_AFFECT_LIVE)[0]
    finally:
        conn.close()


def test_vm_policy_link_and_sources_on_test_driver():
    from hostkv.common import domain_xml
    assert run(["vm", "set", "test", "owner=alice", "role=pinned"])[0] == 0
    code, out, _ = run(["vm", "policy", "test"])
    assert code == 0 and "policy not set" in out
    code, out, _ = run(["vm", "policy", "test", "opaque"])
    assert code == 0 and "policy opaque" in out
    assert json.loads(run(["vm", "policy", "test", "--json"])[1]) == {"domain": "test", "policy": "opaque"}
    with pytest.raises(SystemExit) as usage:            # argparse: exit 2, nothing changed
        run(["vm", "policy", "test", "secret"])
    assert usage.value.code == cli.EXIT_USAGE
    code, out, _ = run(["vm", "link", "test", "--cobbler-system", "web1", "--cobbler-server", "cobbler.example"])
    assert code == 0 and "linked to cobbler server=http://cobbler.example/cobbler_api system=web1" in out
    meta = _meta()
    assert meta.keys == {"vm.owner": "alice", "vm.role": "pinned"} and meta.policy == "opaque"
    # what hostkvd's metadata writer stores after reading the record (simulated here)
    conn = libvirt.open(URI)
    try:
        dom = conn.lookupByName("test")
        meta.set_source(domain_xml.SourceLink("cobbler", dict(meta.source("cobbler").attrs, fetched="1767000000"),
                                              {"vm.role": "db", "vm.tier": "3"}))
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, meta.to_xml(), domain_xml.NS_PREFIX, domain_xml.NS,
                        libvirt.VIR_DOMAIN_AFFECT_LIVE)
    finally:
        conn.close()
    code, out, _ = run(["vm", "get", "test"])
    lines = out.splitlines()
    assert lines[:3] == ['vm.owner = "alice"  local',
                         'vm.role = "pinned"  local (overrides cobbler "db")',
                         'vm.tier = "3"  cobbler server=http://cobbler.example/cobbler_api system=web1']
    assert lines[3] == "policy: opaque" and lines[4].startswith("linked: cobbler server=")
    got = json.loads(run(["vm", "get", "test", "--json"])[1])
    assert got["origins"] == {"vm.owner": "local", "vm.role": "local", "vm.tier": "cobbler"}
    assert got["links"]["cobbler"]["keys"] == {"vm.role": "db", "vm.tier": "3"}
    # a key only Cobbler sets cannot be unset locally: the message says where it comes from
    code, _, err = run(["vm", "unset", "test", "tier"])
    assert code == cli.EXIT_FAILED and "vm.tier comes from cobbler" in err and "vm unlink test" in err
    # vm unset of the local override hands the key back to Cobbler; vm set says what it overrides
    assert run(["vm", "unset", "test", "role"])[0] == 0
    assert json.loads(run(["vm", "get", "test", "--json"])[1])["values"]["vm.role"] == "db"
    code, out, _ = run(["vm", "set", "test", "role=again"])
    assert 'overrides vm.role (cobbler has "db")' in out
    # re-linking to the same record keeps its keys; to another one starts empty
    run(["vm", "link", "test", "--cobbler-system", "web1", "--cobbler-server", "cobbler.example"])
    assert _meta().source("cobbler").values == {"vm.role": "db", "vm.tier": "3"}
    run(["vm", "link", "test", "--cobbler-profile", "el9"])
    assert _meta().source("cobbler").attrs == {"profile": "el9"} and _meta().source("cobbler").values == {}
    # unlink --keep-keys; the local key that was there stays
    run(["vm", "link", "test", "--cobbler-system", "web1", "--cobbler-server", "cobbler.example"])
    code, out, _ = run(["vm", "unlink", "test", "--keep-keys"])
    assert code == 0, out
    meta = _meta()
    assert meta.sources == [] and meta.keys == {"vm.owner": "alice", "vm.role": "again"}
    assert run(["vm", "unlink", "test"])[0] == cli.EXIT_FAILED
    assert run(["vm", "link", "test", "--cobbler-system", "web1", "--cobbler-server", "ftp://x"])[0] == cli.EXIT_USAGE
    run(["vm", "policy", "test", "default"])
    run(["vm", "unset", "test", "owner", "role"])
    assert _meta().is_empty()


def test_status_shows_origins_keysources_and_policies(tmp_path):
    path = str(tmp_path / "ctl.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    status = {"server": "hostkvd/x", "pid": 1, "host_id": "hid", "config": "/c", "default_policy": "all",
              "host_values": {"host.hostname": "h1", "host.rack": "r7"},
              "host_origins": {"host.hostname": "builtin", "host.rack": "cobbler"},
              "keysources": {"cobbler": {"state": "unreachable", "since": 1767000000.0, "reason": "refused",
                                         "server": "http://c/cobbler_api", "host_record": "h1",
                                         "host_values": {"host.rack": "r7"},
                                         "guests": {"web1": {"problem": "Cobbler system web1: bad"}}}},
              "channels": [{"label": "web1", "state": "connected", "generation": 5, "pushes": 2, "connects": 1,
                            "path": "/p", "policy": "opaque", "policy_from": "domain",
                            "vm_origins": {"vm.role": "cobbler", "vm.x": "local"},
                            "links": {"cobbler": {"system": "web1", "fetched": "1"}}}]}

    def serve():
        conn, _ = srv.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(json.dumps({"ok": True, "status": status}).encode() + b"\n")
    threading.Thread(target=serve, daemon=True).start()
    code, out, _ = run(["status"], path)
    srv.close()
    assert code == 0
    assert '  host.rack = "r7"  (cobbler)' in out and '  host.hostname = "h1"  (builtin)' in out
    assert "cobbler: unreachable since " in out and "(refused); last known keys stay" in out
    assert "  web1: Cobbler system web1: bad" in out
    assert "policy opaque; vm keys: 1 cobbler, 1 local; linked: cobbler system=web1" in out


def test_version_flag(capsys):
    from hostkv.common.version import VERSION
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out == "hostkvctl %s\n" % VERSION


def test_json_on_every_reporting_command(fake_hostkvd):
    """host set/unset, reload, vm set/unset/get, enable and failures: one JSON object on stdout."""
    path, _requests = fake_hostkvd
    for argv in (["host", "set", "rack=r12", "--json"], ["host", "unset", "rack", "--json"],
                 ["reload", "--json"]):
        code, out, _ = run(argv, path)
        assert code == 0 and json.loads(out) == {"ok": True, "message": "reloaded; pushed to 1 guest(s)"}
    code, out, _ = run(["vm", "set", "test", "role=web", "--json"])
    assert code == 0 and json.loads(out) == {"ok": True, "domain": "test", "action": "set",
                                             "keys": {"vm.role": "web"}, "views": ["config", "live"],
                                             "dropped": []}
    code, out, _ = run(["vm", "get", "test", "role", "--json"])
    assert code == 0 and json.loads(out) == {"domain": "test", "key": "vm.role", "value": "web",
                                             "origin": "local"}
    code, out, _ = run(["vm", "unset", "test", "role", "--json"])
    assert code == 0 and json.loads(out)["keys"] == ["vm.role"]
    code, out, err = run(["enable", "test", "--json"])
    doc = json.loads(out)
    assert code == cli.EXIT_FAILED and doc["ok"] is False and doc["command"] == "enable"
    assert doc["domains"][0]["domain"] == "test" and "cannot enable hostkv on test" in doc["domains"][0]["error"]
    code, out, err = run(["host", "unset", "nope", "--json"], path)
    assert code == cli.EXIT_FAILED and json.loads(out) == {"ok": False, "exit": 1,
                                                           "error": "hostkvd: not set in /c: host.nope"}
    assert "not set" in err


def test_vm_get_lines_cannot_be_misread():
    """Every value is one JSON string on its line (a newline, CR, blank or quote cannot break it),
    followed by where it comes from; one key's value is printed byte for byte with a newline after it."""
    run(["vm", "set", "test", "cr=x\r\ny\r", "plain=a=b c", "blank=  pad", "q=\"quoted\"", "e="])
    try:
        code, out, _ = run(["vm", "get", "test"])
        assert code == 0
        assert out.split("\n")[:5] == ['vm.blank = "  pad"  local', 'vm.cr = "x\\r\\ny\\r"  local',
                                       'vm.e = ""  local', 'vm.plain = "a=b c"  local',
                                       'vm.q = "\\"quoted\\""  local']
        code, out, _ = run(["vm", "get", "test", "cr"])
        assert code == 0 and out == "x\r\ny\r\n"
        code, out, _ = run(["vm", "get", "test", "vm.plain"])
        assert out == "a=b c\n"
        code, _, err = run(["vm", "get", "test", "nope"])
        assert code == cli.EXIT_FAILED and "test has no key vm.nope" in err
    finally:
        run(["vm", "unset", "test", "cr", "plain", "blank", "q", "e"])
