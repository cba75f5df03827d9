"""Wait for a directory's entries to change: inotify on Linux (no wakeups while nothing changes),
else (or while a directory does not exist yet) a rescan every ``interval`` seconds.

    watch = DirectoryWatch(["/run/qemu-channels"], interval=1.0)
    while True:
        rescan()
        await watch.changed()

``changed()`` may return without a change (callers rescan, which is idempotent); it never misses
one: every directory that cannot be watched is polled instead.
"""

import asyncio
import ctypes
import ctypes.util
import os
import struct

from hostkv.hostkvd.timeout import within

IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = 0o2000000
IN_ATTRIB, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x4, 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_IGNORED = 0x400, 0x800, 0x8000
MASK = IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.inotify_init1
        return libc
    except (OSError, AttributeError):
        return None


class DirectoryWatch(object):
    def __init__(self, directories, interval=1.0):
        self.directories = list(directories)
        self.interval = interval
        self._libc = _libc()
        self._fd = -1
        self._event = asyncio.Event()
        if self._libc is not None:
            fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            if fd >= 0:
                self._fd = fd
                asyncio.get_event_loop().add_reader(fd, self._readable)

    @property
    def uses_inotify(self):
        return self._fd >= 0

    def _watch_all(self):
        """(Re-)add a watch on every directory; return True if all of them are watched."""
        if self._fd < 0:
            return False
        ok = True
        for d in self.directories:
            if self._libc.inotify_add_watch(self._fd, os.fsencode(d), MASK) < 0:
                ok = False      # missing (yet) or unreadable: poll for it
        return ok

    def _readable(self):
        try:
            while os.read(self._fd, 65536):
                pass
        except BlockingIOError:
            pass
        except OSError:
            pass
        self._event.set()

    async def changed(self):
        all_watched = self._watch_all()
        self._event.clear()
        if all_watched:
            await self._event.wait()
        else:
            await within(self._event.wait(), self.interval)
        await asyncio.sleep(0.02)        # let a burst of creations settle into one rescan

    def close(self):
        if self._fd >= 0:
            asyncio.get_event_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1


class PathWaiter(object):
    """Wait for a path to appear, sharing ONE inotify instance among all waiters.

    ``await waiter.wait_for(path, timeout)`` returns when something changes in ``path``'s
    directory (the caller retries), or after ``timeout``.  Without inotify, or when the directory
    itself is missing, it just sleeps ``fallback`` seconds.  Used by channels waiting for QEMU to
    create their socket (a migration destination starting), so the reconnect is immediate and a
    missing socket costs no wakeups.
    """

    def __init__(self):
        self._libc = _libc()
        self._fd = -1
        self._dirs = {}        # wd -> directory
        self._waiters = {}     # directory -> set of futures

    def _ensure_fd(self):
        if self._fd < 0 and self._libc is not None:
            fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            if fd >= 0:
                self._fd = fd
                asyncio.get_event_loop().add_reader(fd, self._readable)
        return self._fd >= 0

    def _readable(self):
        data = b""
        try:
            while True:
                chunk = os.read(self._fd, 65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        offset = 0
        while offset + 16 <= len(data):
            wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
            offset += 16 + length
            directory = self._dirs.get(wd)
            if directory is None:
                continue
            if mask & IN_IGNORED:
                self._dirs.pop(wd, None)
            for fut in self._waiters.pop(directory, ()):
                if not fut.done():
                    fut.set_result(None)

    async def wait_for(self, path, timeout, fallback):
        """Return True if the directory was watched (woken by a change or ``timeout``), False if
        it could not be and ``fallback`` seconds were slept instead."""
        directory = os.path.dirname(os.path.abspath(path))
        if not self._ensure_fd():
            await asyncio.sleep(fallback)
            return False
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), MASK)
        if wd < 0:
            await asyncio.sleep(fallback)
            return False
        self._dirs[wd] = directory
        if os.path.exists(path):          # appeared before the watch was in place
            return True
        fut = asyncio.get_event_loop().create_future()
        self._waiters.setdefault(directory, set()).add(fut)
        try:
            await within(fut, timeout)
        finally:
            waiters = self._waiters.get(directory)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    self._waiters.pop(directory, None)
        return True


_path_waiter = None


def path_waiter():
    """The daemon's shared PathWaiter (created on first use, on the running loop)."""
    global _path_waiter
    if _path_waiter is None:
        _path_waiter = PathWaiter()
    return _path_waiter
