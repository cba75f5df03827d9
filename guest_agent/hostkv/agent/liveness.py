"""Is an agent running for this run dir?  Answerable by any reader, without asking the agent.

Contract (docs/AGENT.md "Freshness"; a script can apply it with flock(1)):

* ``RUN_DIR/agent.lock`` (mode 0644) is held with ``flock(LOCK_EX)`` by the running agent for
  its whole life.  The kernel releases the lock when the agent's process ends in any way -
  ``kill -9``, a crash, OOM - so a lock nobody holds means no agent is running, whatever the
  published files still say.
* A reader opens the file read-only and tries ``flock(LOCK_SH | LOCK_NB)``: EWOULDBLOCK means
  the agent is running; success (released at once) or no file means it is not.
  Shell: ``flock -n -s RUN_DIR/agent.lock true`` fails (exit 1) while the agent runs.
* The agent never takes the lock on a file that exists: it writes a new file (its pid on the
  first line), locks it, and renames it over ``agent.lock``.  So a local user who holds a
  shared lock on the old file can neither keep an agent from starting nor make a dead one look
  alive (readers open the path, i.e. the new file).
* The descriptor is close-on-exec: a hook child that outlives a killed agent holds nothing.

No timers, no wake-ups: the lock costs the agent one open file.
"""

import errno
import fcntl
import os

LOCK_NAME = "agent.lock"


def lock_path(run_dir):
    return os.path.join(run_dir, LOCK_NAME)


class AgentLock(object):
    """The running agent's hold on ``RUN_DIR/agent.lock`` (see the module doc)."""

    def __init__(self, run_dir):
        self.path = lock_path(run_dir)
        self.fd = None

    def acquire(self):
        """Create, lock and install a new lock file.  Raises OSError on I/O failure."""
        tmp = "%s.%d.tmp" % (self.path, os.getpid())
        try:
            os.unlink(tmp)               # left by a killed agent with our pid
        except OSError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.fchmod(fd, 0o644)         # readable by every reader, whatever the umask
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)     # a new file: nobody else has it
            os.write(fd, ("%d\n" % os.getpid()).encode("ascii"))
            os.rename(tmp, self.path)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self.fd = fd

    def release(self):
        """Give up the lock (the agent stops).  The file stays: unlocked, it says "not running"."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def agent_running(run_dir):
    """(running, pid) from ``RUN_DIR/agent.lock``; ``running`` is None when the file cannot be
    read (permissions narrowed by an admin): the caller must then not call the data fresh."""
    path = lock_path(run_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return False, None
        return None, None
    try:
        pid = None
        try:
            first = os.read(fd, 32).split(b"\n", 1)[0]
            pid = int(first) if first.isdigit() else None
        except (OSError, ValueError):
            pass
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return True, pid
            return None, pid
        return False, pid            # we got it: nobody holds it (closing the fd releases it)
    finally:
        os.close(fd)
