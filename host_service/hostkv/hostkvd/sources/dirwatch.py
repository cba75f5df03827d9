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

IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = 0o2000000
IN_ATTRIB, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x4, 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF = 0x400, 0x800
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
            try:
                await asyncio.wait_for(self._event.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
        await asyncio.sleep(0.02)        # let a burst of creations settle into one rescan

    def close(self):
        if self._fd >= 0:
            asyncio.get_event_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
