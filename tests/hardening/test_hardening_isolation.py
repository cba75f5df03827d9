"""Isolation (issue 6, item 3): guests never see each other's vm.* keys; the control socket is root's.

vm.* keys are fed through the daemon API (tests/hardening/vmkeys_daemon.py: the real Hostkvd,
Channel and control socket in their own process) while both guests reconnect and ask for each
other's keys.  The control socket is tried by a client running as ``nobody`` (setpriv).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from tests.harness.fake_port import FakePort
from tests.harness.hostkvd_proc import HostkvdProcess, PYTHONPATH

HERE = os.path.dirname(os.path.abspath(__file__))
UPDATES = 300


class GuestPlayer(threading.Thread):
    """Plays guest ``me``: reconnects every ``every`` frames, asks for its own and the other's keys."""

    def __init__(self, port, me, other, stop, every=15):
        threading.Thread.__init__(self, daemon=True)
        self.port, self.me, self.other, self.stop_evt, self.every = port, me, other, stop, every
        self.snapshots, self.values, self.errors, self.reconnects, self.failure = [], [], [], 0, None

    def run(self):
        try:
            self.port.accept(10)
            n = 0
            while not self.stop_evt.is_set():
                try:
                    f = self.port.frame(timeout=0.2)
                except AssertionError as err:
                    if "closed" in str(err):
                        raise
                    f = None
                if f is not None:
                    n += 1
                    if f["op"] == "snapshot":
                        self.snapshots.append(f)
                    elif f["op"] == "value":
                        self.values.append(f)
                    elif f["op"] == "error":
                        self.errors.append(f)
                if n % 5 == 0:
                    for key in ("vm.owner", "vm.%s-only" % self.other, "vm.%s-only" % self.me):
                        self.port.send({"op": "get", "id": key, "key": key})
                if n and n % self.every == 0:
                    self.port.drop()                 # a reconnect (QEMU restarted the chardev)
                    self.port.accept(10)
                    self.reconnects += 1
                    n += 1
        except BaseException as err:  # reported by the test
            self.failure = err


def test_two_guests_never_receive_each_others_vm_keys(tmp_path):
    ports = {g: FakePort(tmp_path / ("%s.sock" % g)) for g in "ab"}
    conf = tmp_path / "hostkvd.conf"
    conf.write_text("[host]\nhost.rack = r1\n")
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "vmkeys_daemon.py"), str(tmp_path / "ctl.sock"), str(conf)]
        + ["%s=%s" % (g, ports[g].path) for g in "ab"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(str(tmp_path / "daemon.log"), "wb"),
        env=dict(os.environ, PYTHONPATH=PYTHONPATH))
    stop = threading.Event()
    players = {"a": GuestPlayer(ports["a"], "a", "b", stop), "b": GuestPlayer(ports["b"], "b", "a", stop)}
    try:
        assert proc.stdout.readline().strip() == b"started"
        for p in players.values():
            p.start()
        for i in range(UPDATES):
            for g in "ab":
                values = {"vm.owner": g, "vm.seq": str(i), "vm.%s-only" % g: "secret-%s-%d" % (g, i)}
                proc.stdin.write(json.dumps({"key": g, "values": values}).encode() + b"\n")
            proc.stdin.flush()
            assert proc.stdout.readline().startswith(b"ok") and proc.stdout.readline().startswith(b"ok")
            time.sleep(0.005)
        time.sleep(0.5)
        stop.set()
        for p in players.values():
            p.join(15)
            assert p.failure is None, repr(p.failure)
        for g, p in players.items():
            other = "b" if g == "a" else "a"
            assert p.reconnects >= 5 and len(p.snapshots) >= 20, (p.reconnects, len(p.snapshots))
            gens = []
            for s in p.snapshots:
                vm = {k: v for k, v in s["values"].items() if k.startswith("vm.")}
                assert not any(other in k or other == v or ("-%s-" % other) in v for k, v in vm.items()), s
                if vm:
                    assert vm["vm.owner"] == g and vm["vm.%s-only" % g] == "secret-%s-%s" % (g, vm["vm.seq"])
                gens.append(s["generation"])
            assert gens == sorted(gens)                     # never an older snapshot after a newer one
            assert p.snapshots[-1]["values"]["vm.seq"] == str(UPDATES - 1)   # nothing lost at the end
            for v in p.values:
                assert v["key"] != "vm.%s-only" % other and v["value"] not in (other,)
                assert other not in v["value"], v
            assert any(e.get("id") == "vm.%s-only" % other and e["code"] == "not-found" for e in p.errors)
        print("isolation: %s" % {g: (len(p.snapshots), p.reconnects, len(p.values)) for g, p in players.items()})
    finally:
        stop.set()
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        for p in ports.values():
            p.close()


CLIENT = r"""
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except OSError as err:
    print(json.dumps({"uid": os.getuid(), "connect_error": err.errno})); sys.exit(0)
# The request goes first, as hostkvctl sends it: a refused peer must still read the refusal
# (hostkvd takes the request line before answering, so the close is no ECONNRESET).
data = b""
s.settimeout(5)
s.sendall(b'{"op": "host-set", "values": {"host.pwned": "yes"}}\n{"op": "status"}\n')
while data.count(b"\n") < 2:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
print(json.dumps({"uid": os.getuid(), "replies": [json.loads(l) for l in data.splitlines() if l.strip()]}))
"""


def run_as(user, socket_path):
    argv = [sys.executable, "-c", CLIENT, socket_path]
    if user != "root":
        argv = ["setpriv", "--reuid", user, "--regid", "nogroup", "--clear-groups", "--"] + argv
    res = subprocess.run(argv, capture_output=True, timeout=30)
    assert res.returncode == 0, res.stderr.decode()
    return json.loads(res.stdout.decode())


def test_control_socket_refuses_non_root_and_answers_root():
    base = tempfile.mkdtemp(prefix="hostkv-ctl-")
    os.chmod(base, 0o755)                  # nobody may traverse to the socket
    d = HostkvdProcess(base, host_id="h", config_text="[host]\nhost.rack = r1\n")
    try:
        d.start()
        # 1. as installed: the socket is 0600 root, so nobody cannot even connect
        out = run_as("nobody", d.control_path)
        assert out["uid"] != 0 and out.get("connect_error") == 13, out       # EACCES
        # 2. even if the socket's mode were wrong, the peer-credential check refuses nobody
        os.chmod(d.control_path, 0o666)
        out = run_as("nobody", d.control_path)
        assert out["replies"] == [{"ok": False, "error": "permission denied: hostkvctl must run as root"}], out
        assert "refused a connection from uid %d" % out["uid"] in d.log()
        assert "pwned" not in open(d.config_path).read()                    # nothing changed
        assert "host.pwned" not in d.control({"op": "status"})["status"]["host_values"]
        # 3. root works
        out = run_as("root", d.control_path)
        assert out["uid"] == 0 and out["replies"][0]["ok"] is True
        assert out["replies"][1]["status"]["host_values"]["host.pwned"] == "yes"
    finally:
        d.stop()
        shutil.rmtree(base, ignore_errors=True)
