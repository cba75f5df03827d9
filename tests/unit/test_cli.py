"""The ``hostkv`` CLI: output and exit codes a script can rely on (0,1,2,3,4,5).

Runs the real wrapper guest_agent/bin/hostkv in a subprocess, against run dirs written by
the real Publisher and against a real agent (in-process thread, fake port: see
test_agent_support.py).
"""

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from hostkv.agent.model import Record
from hostkv.agent.publish import Publisher

from test_agent_support import Rig, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOSTKV = os.path.join(REPO, "guest_agent", "bin", "hostkv")
VALUES = {"host.hostname": "hv1.example", "vm.multi": "line1\nline2\n", "vm.quote": '"quoted',
          "vm.empty": "", "vm.utf8": "Zürich"}


def hostkv(run_dir, *args, **kw):
    env = {"PATH": "/usr/bin:/bin", "HOSTKV_RUN_DIR": str(run_dir)}
    env.update(kw.pop("env", {}))
    return subprocess.run([sys.executable, HOSTKV] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env, timeout=kw.pop("timeout", 30))


@pytest.fixture
def published(tmp_path):
    run = tmp_path / "run"
    pub = Publisher(str(run))
    pub.prepare()
    pub.publish(Record(7, "hv1", 3, VALUES, time.time() - 2, False, True))
    return run, pub


def test_get_prints_the_value_exactly(published):
    run, _ = published
    for key, value in VALUES.items():
        p = hostkv(run, "get", key)
        assert (p.returncode, p.stdout) == (0, value.encode("utf-8")), key


def test_get_exit_codes(published, tmp_path):
    run, pub = published
    p = hostkv(run, "get", "host.missing")
    assert p.returncode == 1 and p.stdout == b"" and b"key not found" in p.stderr
    assert hostkv(run, "get", "not a key").returncode == 2
    assert hostkv(run, "get").returncode == 2
    assert hostkv(run).returncode == 2
    assert hostkv(run, "get", "host.hostname", "--bogus").returncode == 2
    assert hostkv(run, "watch", "--since", "-3").returncode == 2
    assert hostkv(tmp_path / "nothing", "get", "host.hostname").returncode == 3
    # the files say fresh, but no agent runs (as after kill -9: a socket nobody listens on)
    import socket as socketmod
    dead = socketmod.socket(socketmod.AF_UNIX)
    dead.bind(os.path.join(str(run), "agent.sock"))
    dead.close()
    p = hostkv(run, "get", "--fresh", "host.hostname")
    assert p.returncode == 5 and b"agent is not running" in p.stderr
    pub.publish(Record(7, "hv1", 3, VALUES, time.time(), True, False))      # cached, host away
    p = hostkv(run, "get", "--fresh", "host.hostname")
    assert p.returncode == 5 and p.stdout == b"" and b"stale" in p.stderr
    assert hostkv(run, "get", "host.hostname").stdout == b"hv1.example"
    assert hostkv(run, "list", "--fresh").returncode == 5


def test_list_env_and_status_without_agent(published, tmp_path):
    run, _ = published
    p = hostkv(run, "list")
    assert p.returncode == 0
    assert p.stdout.decode("utf-8") == ('host.hostname=hv1.example\nvm.empty=\nvm.multi="line1\\nline2\\n"\n'
                                        'vm.quote="\\"quoted"\nvm.utf8=Zürich\n')
    doc = json.loads(hostkv(run, "list", "--json").stdout)
    assert doc["values"] == VALUES and doc["seq"] == 7
    p = hostkv(run, "env")
    with open(os.path.join(str(run), "env"), "rb") as f:
        assert p.returncode == 0 and p.stdout == f.read()
    p = hostkv(run, "status", "--json")
    info = json.loads(p.stdout)
    assert p.returncode == 3              # data, but the agent is not running
    assert info["agent"] == "not running" and info["seq"] == 7 and 1 < info["age"] < 60
    assert b"agent:      not running" in hostkv(run, "status").stdout
    for args in (("list",), ("env",), ("status",), ("watch", "--timeout", "1"),
                 ("get", "--live", "host.hostname")):
        assert hostkv(tmp_path / "nothing", *args).returncode == 3, args


def test_help_documents_exit_codes(tmp_path):
    p = hostkv(tmp_path, "--help")
    assert p.returncode == 0
    for line in (b"0  ok", b"1  key not found", b"2  usage error", b"3  no data",
                 b"4  watch timed out", b"5  the data is stale", b"6  permission denied"):
        assert line in p.stdout


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    r.start()
    r.host.connect()
    r.wait_published(lambda d: d["connected"] and not d["stale"], "first snapshot")
    yield r
    r.stop()


def test_with_agent_status_live_get_and_watch(rig):
    run = rig.run_dir
    p = hostkv(run, "status", "--json")
    info = json.loads(p.stdout)
    assert p.returncode == 0 and info["connected"] and info["seq"] == 1 and info["state"] == "connected"
    assert b"channel:    connected" in hostkv(run, "status").stdout
    p = hostkv(run, "get", "--fresh", "host.hostname")
    assert (p.returncode, p.stdout) == (0, b"hv1.example")
    assert hostkv(run, "list", "--fresh").returncode == 0
    p = hostkv(run, "get", "--live", "-v", "host.hostname")
    assert (p.returncode, p.stdout) == (0, b"hv1.example") and b"round trip" in p.stderr
    assert hostkv(run, "get", "--live", "host.missing").returncode == 1

    # watch a key: the change comes later; output = token line + the exact value
    out = {}

    def run_watch():
        out["p"] = hostkv(run, "watch", "vm.role", "--since", "1", "--timeout", "20")

    t = threading.Thread(target=run_watch)
    t.start()
    wait_for(lambda: len(rig.agent.watchers) == 1, what="CLI watcher")
    rig.host.set(values={"host.hostname": "hv1.example", "vm.role": "two\nlines"})
    t.join(20)
    assert out["p"].returncode == 0 and out["p"].stdout == b"2\ntwo\nlines"
    # the token from the past sees the change at once; the current token times out (exit 4)
    assert hostkv(run, "watch", "vm.role", "--since", "1", "--json").returncode == 0
    p = hostkv(run, "watch", "--since", "2", "--timeout", "0.3")
    assert p.returncode == 4 and b"no change" in p.stderr
    p = hostkv(run, "watch", "--since", "1", "--json")
    doc = json.loads(p.stdout)
    assert p.returncode == 0 and doc["seq"] == 2 and doc["snapshot"]["values"]["vm.role"] == "two\nlines"
    # removal of the watched key: exit 1, token still printed
    rig.host.set(values={"host.hostname": "hv1.example"})
    p = hostkv(run, "watch", "vm.role", "--since", "2")
    assert p.returncode == 1 and p.stdout == b"3\n"


def test_wrappers_find_an_installed_tree_from_their_own_path(tmp_path):
    """<root>/usr/bin/hostkv and <root>/usr/sbin/hostkv-agent use <root>/usr/lib/hostkv-agent."""
    import shutil
    root = tmp_path / "root"
    lib = root / "usr" / "lib" / "hostkv-agent" / "hostkv"
    shutil.copytree(os.path.join(REPO, "guest_agent", "hostkv", "agent"), str(lib / "agent"))
    shutil.copy(os.path.join(REPO, "protocol", "hostkv", "protocol.py"), str(lib))
    shutil.copytree(os.path.join(REPO, "protocol", "hostkv", "common"), str(lib / "common"))
    (lib / "agent" / "__init__.py").write_text('VERSION = "from-the-tree"\n')
    for name, bindir in (("hostkv", "bin"), ("hostkv-agent", "sbin")):
        (root / "usr" / bindir).mkdir(parents=True)
        shutil.copy(os.path.join(REPO, "guest_agent", "bin", name), str(root / "usr" / bindir / name))
        p = subprocess.run([str(root / "usr" / bindir / name), "--version"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, env={"PATH": "/usr/bin:/bin"}, cwd=str(tmp_path),
                           timeout=30)
        assert p.returncode == 0 and p.stdout.strip().endswith(b"from-the-tree"), p.stdout
    p = subprocess.run([sys.executable, HOSTKV, "--version"], stdout=subprocess.PIPE, timeout=30,
                       env={"PATH": "/usr/bin:/bin", "HOSTKV_AGENT_LIBDIR": str(tmp_path / "nothing")},
                       stderr=subprocess.PIPE)
    assert p.returncode == 1 and b"cannot find the hostkv-agent code" in p.stderr


def test_watch_survives_an_agent_restart(rig):
    run = rig.run_dir
    out = {}

    def run_watch():
        out["p"] = hostkv(run, "watch", "vm.role", "--timeout", "30")

    t = threading.Thread(target=run_watch)
    t.start()
    wait_for(lambda: len(rig.agent.watchers) == 1, what="CLI watcher")
    rig.stop()                       # the watcher is told "shutdown"; the CLI reconnects
    rig.start()
    rig.wait_published(lambda d: d["connected"] and not d["stale"], "new agent in sync")
    rig.host.set(values={"host.hostname": "hv1.example", "vm.role": "after-restart"})
    t.join(30)
    assert out["p"].returncode == 0, out["p"].stderr
    assert out["p"].stdout == b"2\nafter-restart"
