"""The agent's liveness is part of freshness (issue 10.3a), for any reader, without the agent.

A real ``hostkv-agent`` process on a pty (``--device``: the test's pty master plays the host
with the real ``protocol.HostSession``), killed with SIGKILL; the real ``hostkv`` CLI run as
``nobody`` (setpriv) and a script's check (flock(1)) must both see the data as stale although
the killed agent's values.json still says ``stale: false, connected: true``.  Then the
read-only socket (issue 12.3): ``nobody`` can watch and get status, cannot ``get --live``
(exit 6, not the "agent down" 3).
"""

import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tty

import pytest

from hostkv import protocol
from hostkv.agent import liveness
from hostkv.agent.publish import read_current

from test_agent_support import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AGENT = os.path.join(REPO, "guest_agent", "bin", "hostkv-agent")
HOSTKV = os.path.join(REPO, "guest_agent", "bin", "hostkv")

needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                reason="needs root and setpriv to run the CLI as nobody")


@pytest.fixture
def world_dir():
    """A directory ``nobody`` can enter (pytest's tmp_path is 0700)."""
    path = tempfile.mkdtemp(prefix="live-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class PtyHost(object):
    """The host end of a pty the agent uses as its port: a real HostSession answering it."""

    def __init__(self, values):
        self.master, slave = pty.openpty()
        tty.setraw(slave)
        self.device = os.ttyname(slave)
        self.slave = slave                  # kept open: the pty stays configured
        self.snapshot = protocol.Snapshot("hv1", 1, dict(values))
        self.session = protocol.HostSession(lambda: self.snapshot)
        self.lock = threading.Lock()
        self.session.connect()
        os.write(self.master, self.session.data_to_send())
        self._stop = False
        self.thread = threading.Thread(target=self._serve)
        self.thread.daemon = True
        self.thread.start()

    def _serve(self):
        while not self._stop:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            with self.lock:
                self.session.receive(data)
                out = self.session.data_to_send()
            if out:
                os.write(self.master, out)

    def close(self):
        self._stop = True
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


def spawn_agent(base, device):
    env = {"PATH": "/usr/bin:/bin", "HOSTKV_RUN_DIR": os.path.join(base, "run"),
           "HOSTKV_STATE_DIR": os.path.join(base, "state"), "HOSTKV_HOOKS_DIR": os.path.join(base, "hooks"),
           "HOSTKV_SYSFS_DIR": os.path.join(base, "sys"), "HOSTKV_DEV_DIR": os.path.join(base, "dev")}
    return subprocess.Popen([sys.executable, AGENT, "--device", device], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, universal_newlines=True)


def _cli_nobody_can_run(run_dir):
    """The CLI in a copy of the checkout's guest code that ``nobody`` can read (the checkout itself
    may sit under a 0700 home, e.g. /root in CI's clean room), run by the system's python3 (the
    agent is stdlib-only; the venv may be unreadable too)."""
    top = os.path.join(os.path.dirname(run_dir), "code")
    if not os.path.isdir(top):
        skip = shutil.ignore_patterns("__pycache__", "*.pyc")
        for part in ("protocol", "guest_agent"):
            shutil.copytree(os.path.join(REPO, part), os.path.join(top, part), ignore=skip)
        for root, dirs, files in os.walk(top):
            os.chmod(root, 0o755)
            for name in files:
                os.chmod(os.path.join(root, name), 0o755 if root.endswith("bin") else 0o644)
    return ["/usr/bin/python3", os.path.join(top, "guest_agent", "bin", "hostkv")]


def as_nobody(run_dir, *args):
    cmd = (["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
           + _cli_nobody_can_run(run_dir) + list(args))
    return subprocess.run(cmd, env={"PATH": "/usr/bin:/bin", "HOSTKV_RUN_DIR": run_dir},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)


@needs_root
def test_kill_9_makes_the_data_stale_for_non_root_readers_and_scripts(world_dir):
    run = os.path.join(world_dir, "run")
    host = PtyHost({"host.hostname": "hv1.example", "vm.role": "db"})
    agent = spawn_agent(world_dir, host.device)
    try:
        wait_for(lambda: (lambda d: d if d and not d["stale"] and d["connected"] else None)(
            _published(run)), timeout=20, what="the agent publishes the host's values fresh")
        p = as_nobody(run, "get", "--fresh", "host.hostname")
        assert (p.returncode, p.stdout) == (0, b"hv1.example"), p.stderr
        assert liveness.agent_running(run) == (True, agent.pid)
        # a script's check: flock(1) cannot take the shared lock while the agent runs
        assert subprocess.run(["flock", "-n", "-s", os.path.join(run, "agent.lock"), "true"]).returncode == 1
        # 12.3: nobody may watch (through agent-ro.sock) and ask for status ...
        p = as_nobody(run, "watch", "--since", "0", "--json")
        assert p.returncode == 0 and json.loads(p.stdout)["fresh"] is True, p.stderr
        p = as_nobody(run, "status", "--json")
        info = json.loads(p.stdout)
        assert p.returncode == 0 and info["fresh"] and info["connected"] and "stats" in info, p.stderr
        # ... but not reach the host or the root-only socket: exit 6, not "agent down" (3)
        p = as_nobody(run, "get", "--live", "host.hostname")
        assert p.returncode == 6 and b"permission denied" in p.stderr, p.stderr
        p = as_nobody(run, "--socket", os.path.join(run, "agent-ro.sock"), "get", "--live", "host.hostname")
        assert p.returncode == 6 and b"needs the root-only" in p.stderr, p.stderr

        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        doc = read_current(run)
        assert doc["stale"] is False and doc["connected"] is True     # the killed agent's last words
        p = as_nobody(run, "get", "--fresh", "host.hostname")
        assert p.returncode == 5 and b"the agent is not running" in p.stderr, (p.returncode, p.stderr)
        p = as_nobody(run, "get", "host.hostname", "--json")
        got = json.loads(p.stdout)
        assert p.returncode == 0 and got["value"] == "hv1.example" and got["fresh"] is False
        p = as_nobody(run, "status")
        assert p.returncode == 3
        assert b"connected:  no (the agent is not running)" in p.stdout and b"STALE" in p.stdout, p.stdout
        assert b"connected:  yes" not in p.stdout
        assert subprocess.run(["flock", "-n", "-s", os.path.join(run, "agent.lock"), "true"]).returncode == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        host.close()


def test_a_shared_lock_held_by_a_user_neither_blocks_an_agent_nor_fakes_one(tmp_path):
    run = str(tmp_path)
    first = liveness.AgentLock(run)
    first.acquire()
    assert liveness.agent_running(run) == (True, os.getpid())
    first.release()
    assert liveness.agent_running(run) == (False, os.getpid())
    squatter = os.open(liveness.lock_path(run), os.O_RDONLY)       # a user holds LOCK_SH on it
    import fcntl
    fcntl.flock(squatter, fcntl.LOCK_SH)
    try:
        assert liveness.agent_running(run)[0] is False     # a shared lock is not an agent
        second = liveness.AgentLock(run)
        second.acquire()                                  # a new file: the squatter is not in the way
        assert liveness.agent_running(run)[0] is True
        second.release()
        assert liveness.agent_running(run)[0] is False
    finally:
        os.close(squatter)
    assert liveness.agent_running(str(tmp_path / "none")) == (False, None)


def _published(run):
    try:
        return read_current(run)
    except Exception:
        return None
