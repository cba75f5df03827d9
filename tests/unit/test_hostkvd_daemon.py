"""The real hostkvd process over real unix sockets; a FakePort plays QEMU's side of each guest.

Fast: no VM.  The same behaviour in a real QEMU guest is covered in tests/core/.
"""
import json
import os
import stat
import time

import pytest

from tests.harness.fake_port import FakePort
from tests.harness.hostkvd_proc import HostkvdProcess


@pytest.fixture
def two_ports(tmp_path):
    ports = [FakePort(tmp_path / "g1.sock"), FakePort(tmp_path / "g2.sock")]
    yield ports
    for p in ports:
        p.close()


@pytest.fixture
def daemon(tmp_path, two_ports):
    d = HostkvdProcess(tmp_path, channels=[p.path for p in two_ports], host_id="host-under-test",
                       config_text="# fleet config\n[host]\nhost.rack = r12\n")
    d.start()
    yield d
    d.stop()


def test_push_on_connect_and_answers(daemon, two_ports):
    g1 = two_ports[0].accept()
    snap = g1.frame()
    assert snap["op"] == "snapshot" and snap["host_id"] == "host-under-test"
    assert snap["values"]["host.rack"] == "r12"
    assert snap["values"]["host.hostname"] == os.uname().nodename
    g1.send({"op": "get", "id": 1, "key": "host.rack"})
    assert g1.frame() == {"op": "value", "id": 1, "key": "host.rack", "value": "r12",
                          "host_id": "host-under-test", "generation": snap["generation"]}


def test_sighup_pushes_new_value_unasked_and_bad_config_is_kept_out(daemon, two_ports):
    g1, g2 = two_ports[0].accept(), two_ports[1].accept()
    first = g1.frame()
    g2.frame()
    with open(daemon.config_path, "a") as f:
        f.write("host.rack = r13\n")        # set twice: invalid
    mark = daemon.log_size()
    daemon.sighup()
    daemon.wait_log("hostkvd.conf:4: host.rack is set twice", after=mark)
    with open(daemon.config_path, "w") as f:
        f.write("[host]\nhost.rack = r14\n")
    daemon.sighup()
    for g in (g1, g2):
        pushed = g.frame(timeout=5)
        assert pushed["op"] == "snapshot" and pushed["values"]["host.rack"] == "r14"
        assert pushed["generation"] > first["generation"]


def test_host_set_via_control_socket_is_persisted_and_pushed(daemon, two_ports):
    g1 = two_ports[0].accept()
    g1.frame()
    mode = stat.S_IMODE(os.stat(daemon.control_path).st_mode)
    assert mode == 0o600
    reply = daemon.control({"op": "host-set", "values": {"host.dc": "fra1", "host.odd": "$(reboot)\n'"}})
    assert reply["ok"], reply
    pushed = g1.frame(timeout=5)
    assert pushed["values"]["host.dc"] == "fra1" and pushed["values"]["host.odd"] == "$(reboot)\n'"
    text = open(daemon.config_path).read()
    assert "# fleet config" in text and "host.dc = fra1" in text
    bad = daemon.control({"op": "host-set", "values": {"vm.role": "web"}})
    assert not bad["ok"] and "host.*" in bad["error"]
    assert daemon.control({"op": "host-unset", "keys": ["host.nope"]})["ok"] is False
    assert daemon.control({"op": "host-unset", "keys": ["host.dc"]})["ok"]
    assert "host.dc" not in g1.frame(timeout=5)["values"]
    status = daemon.control({"op": "status"})["status"]
    assert {c["label"] for c in status["channels"]} == {"g1.sock", "g2.sock"}


def test_reconnects_with_backoff_when_the_socket_comes_back(tmp_path, daemon, two_ports):
    g1 = two_ports[0].accept()
    g1.frame()
    two_ports[0].close()                    # QEMU went away (socket file removed)
    time.sleep(0.5)
    again = FakePort(tmp_path / "g1.sock")  # and came back (restart / migration)
    try:
        t0 = time.monotonic()
        again.accept(timeout=5)
        assert again.frame()["op"] == "snapshot"
        assert time.monotonic() - t0 < 3.0
    finally:
        again.close()


def test_a_misbehaving_guest_never_stalls_another(daemon, two_ports):
    bad, good = two_ports[0].accept(), two_ports[1].accept()
    bad.frame()
    good.frame()
    bad.send(b"x" * (1 << 20))             # a megabyte with no newline
    bad.send(b"{not json}\n" * 50)
    for i in range(20):
        good.send({"op": "ping", "id": i})
        assert good.frame(timeout=2) == {"op": "pong", "id": i}
    errors = []
    while len(errors) < 10:
        f = bad.frame(timeout=5)
        errors.append(f)
    assert errors[0]["code"] == "frame-too-large"
    assert all(e["op"] == "error" for e in errors)


def test_too_many_bad_frames_close_the_channel_with_a_penalty(daemon, two_ports):
    bad = two_ports[0].accept()
    bad.frame()
    mark = daemon.log_size()
    bad.send(b"junk\n" * 150)
    end = daemon.wait_log("bad frames; retrying in 1 s", after=mark)
    line = daemon.log()[:end].rsplit("\n", 1)[-1]
    assert int(line.split("closed the channel after ")[1].split()[0]) >= 100
    t0 = time.monotonic()
    bad.accept(timeout=5)                  # hostkvd comes back after the penalty
    assert bad.frame_where(lambda f: f["op"] == "snapshot")
    assert time.monotonic() - t0 >= 0.8


def test_bad_config_at_start_names_the_line(tmp_path):
    d = HostkvdProcess(tmp_path, config_text="[host]\nhost.ok = 1\nhots.rack = r1\n")   # a scope typo
    with pytest.raises(AssertionError) as err:
        d.start(timeout=10)
    assert "hostkvd.conf:3:" in str(err.value)
    assert d.proc.wait(5) == 1


def test_channel_dir_follows_sockets_without_polling(tmp_path):
    """--channel-dir: a new socket is served at once (inotify), a removed one is dropped, and an
    idle hostkvd does not wake up (no rescans while nothing changes)."""
    chans = tmp_path / "channels"
    chans.mkdir()
    d = HostkvdProcess(tmp_path, channel_dirs=[str(chans)], config_text="")
    d.start()
    port = None
    try:
        time.sleep(0.5)
        before = _ctx_switches(d.proc.pid)
        time.sleep(3.0)
        assert _ctx_switches(d.proc.pid) - before <= 2      # idle: no periodic wakeups
        t0 = time.monotonic()
        port = FakePort(chans / "vm1.sock")
        port.accept(timeout=5)
        assert port.frame()["op"] == "snapshot"
        assert time.monotonic() - t0 < 0.9                   # well under the 1 s fallback rescan
        mark = d.log_size()
        port.close()
        port = None
        d.wait_log("vm1.sock: no longer served", timeout=5, after=mark)
    finally:
        if port is not None:
            port.close()
        d.stop()


def _ctx_switches(pid):
    total = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
            for line in f:
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


def test_a_socket_that_appears_late_is_connected_at_once_without_polling(tmp_path):
    """A migration destination's QEMU creates its socket whenever it starts: hostkvd notices at
    once (inotify on the directory), not after its retry backoff, and waits without waking up."""
    path = tmp_path / "later.sock"
    d = HostkvdProcess(tmp_path, channels=[str(path)], config_text="")
    d.start()
    port = None
    try:
        time.sleep(4.0)                        # the retry backoff has grown to its 2 s maximum
        before = _ctx_switches(d.proc.pid)
        time.sleep(3.0)
        assert _ctx_switches(d.proc.pid) - before <= 2
        t0 = time.monotonic()
        port = FakePort(path)
        port.accept(timeout=5)
        assert port.frame()["op"] == "snapshot"
        assert time.monotonic() - t0 < 0.5
    finally:
        if port is not None:
            port.close()
        d.stop()


def _hostkvctl(daemon, *args):
    import subprocess
    import sys
    from tests.harness import PYTHONPATH
    env = dict(os.environ, PYTHONPATH=PYTHONPATH)
    return subprocess.run([sys.executable, "-m", "hostkv.hostkvctl", "--control-socket", daemon.control_path]
                          + list(args), capture_output=True, text=True, timeout=30, env=env)


def test_reload_and_check_report_a_refused_config_synchronously(daemon, two_ports):
    """`hostkvctl reload` (the unit's ExecReload=) exits 1 naming file:line when hostkvd refuses
    the config, and 0 when it takes it; `hostkvctl check FILE` says the same without hostkvd."""
    g1 = two_ports[0].accept()
    g1.frame()
    good = _hostkvctl(daemon, "reload")
    assert good.returncode == 0 and "reloaded" in good.stdout, good
    with open(daemon.config_path, "a") as f:
        f.write("host.rack = r13\n")        # set twice: refused
    bad = _hostkvctl(daemon, "reload")
    assert bad.returncode == 1, bad
    assert "hostkvd.conf:4: host.rack is set twice" in bad.stderr
    checked = _hostkvctl(daemon, "check", daemon.config_path)
    assert checked.returncode == 1 and "hostkvd.conf:4: host.rack is set twice" in checked.stderr
    # the running config was kept: the guest still gets r12
    g1.send({"op": "get", "id": 7, "key": "host.rack"})
    assert g1.frame()["value"] == "r12"
    with open(daemon.config_path, "w") as f:
        f.write("[host]\nrack = r14\n")
    ok = _hostkvctl(daemon, "check", daemon.config_path, "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["host_keys"] == ["host.rack"]
    assert _hostkvctl(daemon, "reload").returncode == 0
    assert g1.frame(timeout=5)["values"]["host.rack"] == "r14"


class NotifySocket(object):
    """The service manager's side of sd_notify(3): a datagram socket at $NOTIFY_SOCKET."""

    def __init__(self, path):
        import socket
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages = []

    def wait_for(self, pred, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.messages:
                if pred(m):
                    return m
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except OSError:
                pass
        raise AssertionError("no such notification; got %r" % self.messages)


def test_notify_ready_and_status_lines_count_only_guests_that_spoke(tmp_path, two_ports, monkeypatch):
    """Type=notify: READY=1 with a STATUS= line once the control socket is up; STATUS= follows
    what is served.  A channel connected only into a listen backlog (the second port never
    accepts: what a squatter on QEMU's socket leaves us) is 'silent', never 'serving'."""
    ns = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", ns.path)
    d = HostkvdProcess(tmp_path, channels=[p.path for p in two_ports], host_id="notify-test")
    d.start()
    try:
        ready = ns.wait_for(lambda m: "READY=1" in m.split("\n"))
        assert "STATUS=serving 0 guests" in ready
        g1 = two_ports[0].accept()
        g1.frame()
        g1.send({"op": "hello", "id": 1, "versions": [1], "agent": "test"})
        ns.wait_for(lambda m: m.startswith("STATUS=serving 1 guest (1 silent)"))
        status = d.control({"op": "status"})["status"]
        by = {c["label"]: c for c in status["channels"]}
        assert by["g1.sock"]["serving"] and by["g1.sock"]["describe"] == "serving"
        assert by["g2.sock"]["connected"] and not by["g2.sock"]["serving"]
        assert by["g2.sock"]["describe"].startswith("connected, guest silent for ")
        assert "another client may hold the channel" in by["g2.sock"]["describe"]
        # a host set reaches g1 only; the silent g2 is not counted as pushed
        reply = d.control({"op": "host-set", "values": {"host.x": "1"}})
        assert reply["ok"] and reply["pushed"] == 1 and "pushed to 1 guest(s)" in reply["message"]
    finally:
        d.stop()
    assert any(m == "STOPPING=1" for m in ns.messages) or ns.wait_for(lambda m: m == "STOPPING=1", 2)

