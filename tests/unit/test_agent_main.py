"""``python3 -m hostkv.agent`` as a real process: signals, exit status, log format, one agent per socket."""

import os
import signal
import subprocess
import sys
import time

from hostkv.agent import cache
from hostkv.agent.model import Record

from test_agent_support import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AGENT = os.path.join(REPO, "guest_agent", "bin", "hostkv-agent")
HOSTKV = os.path.join(REPO, "guest_agent", "bin", "hostkv")


def spawn(tmp_path, *extra, **env_extra):
    env = {"PATH": "/usr/bin:/bin", "HOSTKV_RUN_DIR": str(tmp_path / "run"), "HOSTKV_STATE_DIR": str(tmp_path / "state"),
           "HOSTKV_HOOKS_DIR": str(tmp_path / "hooks"), "HOSTKV_SYSFS_DIR": str(tmp_path / "sys"),
           "HOSTKV_DEV_DIR": str(tmp_path / "dev")}
    env.update(env_extra)
    return subprocess.Popen([sys.executable, AGENT] + list(extra), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True)


def cli(tmp_path, *args):
    env = {"PATH": "/usr/bin:/bin", "HOSTKV_RUN_DIR": str(tmp_path / "run")}
    return subprocess.run([sys.executable, HOSTKV] + list(args), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=30)


def test_agent_process_lifecycle(tmp_path):
    cache.save(str(tmp_path / "state"), Record(4, "hv9", 2, {"host.hostname": "hv9"}, time.time(),
                                               False, True))
    proc = spawn(tmp_path, JOURNAL_STREAM="8:1234")
    try:
        wait_for(lambda: cli(tmp_path, "status").returncode == 0, timeout=10, what="agent status")
        p = cli(tmp_path, "get", "host.hostname")
        assert (p.returncode, p.stdout) == (0, b"hv9")
        assert cli(tmp_path, "get", "--fresh", "host.hostname").returncode == 5
        assert b"waiting-for-port" in cli(tmp_path, "status").stdout
        # a second agent on the same run dir refuses to start, naming the reason
        second = spawn(tmp_path)
        out, err = second.communicate(timeout=20)
        assert second.returncode == 1
        assert "another agent is already listening" in err
        assert os.path.exists(str(tmp_path / "run" / "agent.sock"))      # the first one's socket
        proc.send_signal(signal.SIGHUP)                                   # re-sync, not a stop
        time.sleep(0.3)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    lines = err.splitlines()
    assert lines and all(l.startswith(("<6>info: ", "<4>warning: ", "<3>error: ")) for l in lines), lines
    assert "<6>info: stopping" in lines
    assert "waiting for the port" in err
    assert not os.path.exists(str(tmp_path / "run" / "agent.sock"))
    assert cli(tmp_path, "status").returncode == 3                          # agent gone


def test_unusable_run_dir_is_a_clear_fatal_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    proc = spawn(tmp_path, "--run-dir", str(blocker / "run"))
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 1 and "error: fatal:" in err and str(blocker) in err


def test_bad_flags_exit_2(tmp_path):
    proc = spawn(tmp_path, "--hook-timeout", "-1")
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 2 and "must be a positive number" in err


def test_log_lines_are_one_per_event(monkeypatch):
    import io
    from hostkv.agent import log
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    buf = io.StringIO()
    logger = log.setup(stream=buf)
    try:
        logger.warning("host said %s", "two\nlines\r")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:                       # leave the logger as other tests expect it
        log.reset()
    lines = buf.getvalue().splitlines()
    assert lines[0] == "warning: host said two\\nlines\\r"
    assert len(lines) == 2 and lines[1].startswith("error: failed | Traceback") and "boom" in lines[1]
