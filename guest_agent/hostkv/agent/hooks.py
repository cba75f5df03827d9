"""Run the executables in /etc/hostkv/hooks.d/ after publications, off the port loop.

The agent submits a run for every data change (a new seq) and once per agent start when
the host first confirms the data even if nothing changed (``HOSTKV_REASON=start``), so
hooks whose effect does not survive a reboot are redone.

One background thread runs the hooks of one publication at a time, in sorted name order,
each with a timeout (the hook's whole process group is killed when it expires).  If
publications arrive faster than hooks finish, the pending ones are merged into one run
(latest seq, union of changed keys, host changed if any was), so the queue stays bounded
and no change is ever left unreported.

Hook environment (in addition to the agent's own): ``HOSTKV_SEQ``, ``HOSTKV_CHANGED``
(space separated changed keys, removed ones included), ``HOSTKV_HOST_CHANGED`` (``1`` if
the host_id changed, else ``0``), ``HOSTKV_HOST_ID``, ``HOSTKV_RUN_DIR``, ``HOSTKV_REASON``
(``change``, or ``start`` for the first confirmation after an agent start without a change).

Skipped (like run-parts): hidden files, non-regular or non-executable files, and names
ending in ``~``, ``.rpmsave``, ``.rpmnew``, ``.rpmorig``, ``.dpkg-*``, ``.swp``, ``.bak``.
"""

import os
import signal
import stat
import threading
import time

from hostkv.agent import log

_SKIP_SUFFIXES = ("~", ".rpmsave", ".rpmnew", ".rpmorig", ".dpkg-old", ".dpkg-new", ".dpkg-dist",
                  ".dpkg-tmp", ".swp", ".bak")
MAX_OUTPUT_LOGGED = 2000


def list_hooks(hooks_dir):
    """Sorted absolute paths of the hooks that would run (missing dir: empty list)."""
    try:
        names = sorted(os.listdir(hooks_dir))
    except OSError:
        return []
    out = []
    for name in names:
        if name.startswith(".") or name.endswith(_SKIP_SUFFIXES):
            continue
        path = os.path.join(hooks_dir, name)
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(path, os.X_OK):
            out.append(path)
    return out


class HookJob(object):
    __slots__ = ("seq", "changed", "host_changed", "host_id", "reason")

    def __init__(self, seq, changed, host_changed, host_id, reason="change"):
        self.seq = seq
        self.changed = set(changed)
        self.host_changed = bool(host_changed)
        self.host_id = host_id
        self.reason = reason

    def merge(self, newer):
        self.seq = newer.seq
        self.changed |= newer.changed
        self.host_changed = self.host_changed or newer.host_changed
        self.host_id = newer.host_id
        if newer.reason == "change":
            self.reason = "change"

    def environ(self, run_dir):
        env = dict(os.environ)
        env.update(HOSTKV_SEQ=str(self.seq), HOSTKV_CHANGED=" ".join(sorted(self.changed)),
                   HOSTKV_HOST_CHANGED="1" if self.host_changed else "0",
                   HOSTKV_HOST_ID=(self.host_id or "").replace("\0", ""), HOSTKV_RUN_DIR=run_dir,
                   HOSTKV_REASON=self.reason)
        return env


class HookRunner(object):
    """Background hook runner.  ``submit()`` never blocks; ``stop()`` ends the thread."""

    def __init__(self, hooks_dir, run_dir, timeout=30.0):
        self.hooks_dir = hooks_dir
        self.run_dir = run_dir
        self.timeout = timeout
        self.log = log.get_logger()
        self._cond = threading.Condition()
        self._pending = None
        self._stopping = False
        self._busy = False
        self.runs = 0            # completed hook runs (for tests/status)
        self._thread = threading.Thread(target=self._loop, name="hostkv-hooks")
        self._thread.daemon = True

    def start(self):
        self._thread.start()

    def submit(self, seq, changed, host_changed, host_id, reason="change"):
        job = HookJob(seq, changed, host_changed, host_id, reason)
        with self._cond:
            if self._pending is None:
                self._pending = job
            else:
                self._pending.merge(job)
            self._cond.notify()

    def idle(self):
        with self._cond:
            return self._pending is None and not self._busy

    def stop(self, wait=5.0):
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(wait)

    def _loop(self):
        while True:
            with self._cond:
                while self._pending is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job, self._pending = self._pending, None
                self._busy = True
            try:
                for path in list_hooks(self.hooks_dir):
                    with self._cond:
                        if self._stopping:
                            return
                    self._run_one(path, job)
            except Exception:
                self.log.exception("hook runner failed")
            finally:
                with self._cond:
                    self._busy = False
                    self.runs += 1

    def _run_one(self, path, job):
        import subprocess            # only once there is a hook to run: an agent without hooks never loads it
        start = time.time()
        try:
            proc = subprocess.Popen([path], env=job.environ(self.run_dir), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True)
        except (OSError, ValueError) as err:
            self.log.error("hook %s could not start: %s", path, err)
            return
        try:
            out, _ = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                out, _ = proc.communicate(timeout=2)
            except subprocess.TimeoutExpired:   # a child escaped the group and holds the pipe
                proc.stdout.close()
                proc.wait()
                out = b""
            self.log.error("hook %s timed out after %.0f s (seq %d); killed", path, self.timeout, job.seq)
            self._log_output(path, out)
            return
        self._log_output(path, out)
        if proc.returncode != 0:
            self.log.warning("hook %s exited with status %d (seq %d)", path, proc.returncode, job.seq)
        else:
            self.log.info("hook %s ok (seq %d, %.2f s)", path, job.seq, time.time() - start)

    def _log_output(self, path, out):
        if not out:
            return
        text = out[:MAX_OUTPUT_LOGGED].decode("utf-8", "replace")
        for line in text.splitlines():
            self.log.info("hook %s: %s", os.path.basename(path), line)
