"""Run the real hostkvd (``python -m hostkv.hostkvd``) as a subprocess for tests.

    d = HostkvdProcess(workdir, channels=[sock_path], config_text="[host]\\nhost.rack = r1\\n")
    d.start()                    # waits for its "started" log line; fails loudly with the log
    d.control({"op": "status"})  # one request on the control socket
    d.sighup(); d.kill9(); d.stop()

Its stderr goes to ``workdir/hostkvd.log`` (``d.log()``).  ``prefix`` runs it under another
command, e.g. ``["unshare", "--uts", "sh", "-c", "hostname hostA && exec \\"$0\\" \\"$@\\""]`` to give
it its own host name.
"""

import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CODE_DIRS = [os.path.join(REPO, d) for d in ("protocol", "guest_agent", "host_service")]
PYTHONPATH = os.pathsep.join(CODE_DIRS)
for _d in CODE_DIRS:                   # also when imported by bench/ and scripts/, not only by pytest
    if _d not in sys.path:
        sys.path.append(_d)

from hostkv.hostkvctl import control_client  # noqa: E402


def uts_prefix(hostname):
    """Run the command as a simulated host named ``hostname``: a new UTS namespace with that host
    name and a private mount namespace whose /etc/hosts names it (tests/harness/etc_hosts.py)."""
    from tests.harness.etc_hosts import BIND_SH, hosts_text
    script = ('hostname "$0" && HOSTS_FILE=$(mktemp) && printf "%s" "$1" > "$HOSTS_FILE" && '
              'chmod 0644 "$HOSTS_FILE" && ' + BIND_SH + ' && rm -f "$HOSTS_FILE" && shift 2 && exec "$@"')
    return ["unshare", "--uts", "--mount", "--propagation", "private", "sh", "-c", script, hostname,
            hosts_text(hostname), "--"]


class HostkvdProcess(object):
    def __init__(self, workdir, channels=(), channel_dirs=(), config_text=None, extra_args=(),
                 prefix=(), python=sys.executable, host_id=None, name="hostkvd"):
        self.workdir = str(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.config_path = os.path.join(self.workdir, name + ".conf")
        self.control_path = os.path.join(self.workdir, name + ".sock")
        self.log_path = os.path.join(self.workdir, name + ".log")
        if config_text is not None:
            with open(self.config_path, "w") as f:
                f.write(config_text)
        self.argv = list(prefix) + [python, "-m", "hostkv.hostkvd", "--config", self.config_path,
                                    "--control-socket", self.control_path, "--log-level", "debug"]
        for ch in channels:
            self.argv += ["--channel", str(ch)]
        for d in channel_dirs:
            self.argv += ["--channel-dir", str(d)]
        if host_id:
            self.argv += ["--host-id", host_id]
        self.argv += list(extra_args)
        self.proc = None

    def start(self, timeout=15):
        env = dict(os.environ, PYTHONPATH=PYTHONPATH)
        env.pop("JOURNAL_STREAM", None)
        self._log = open(self.log_path, "ab")
        self._mark = self._log.tell()
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=self._log, env=env)
        self.wait_log("started", timeout)
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.control_path):
            self._check_alive()
            if time.monotonic() > deadline:
                raise AssertionError("hostkvd control socket did not appear:\n" + self.log())
            time.sleep(0.02)
        return self

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_log(self, text, timeout=10, after=None):
        """Wait until ``text`` appears in the log (after byte offset ``after``); returns the offset."""
        deadline = time.monotonic() + timeout
        start = self._mark if after is None else after
        while True:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                data = f.read().decode("utf-8", "replace")
            if text in data:
                return start + data.index(text) + len(text)
            self._check_alive()
            if time.monotonic() > deadline:
                raise AssertionError("hostkvd never logged %r; log:\n%s" % (text, self.log()[-4000:]))
            time.sleep(0.02)

    def log_size(self):
        return os.path.getsize(self.log_path)

    def _check_alive(self):
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError("hostkvd exited with %s; log:\n%s" % (self.proc.returncode, self.log()[-4000:]))

    def control(self, request, timeout=10):
        """One request on the control socket, through hostkvctl's own client."""
        return control_client.request(self.control_path, request, timeout)

    def sighup(self):
        self.proc.send_signal(signal.SIGHUP)

    def kill9(self):
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
