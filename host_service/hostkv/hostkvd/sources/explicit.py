"""Channels named explicitly: ``--channel PATH`` (repeatable) and ``--channel-dir DIR``.

For plain-QEMU users: start QEMU with
``-chardev socket,id=hkv,path=PATH,server=on,wait=off -device virtserialport,chardev=hkv,name=org.hostkv.0``
and hand PATH to hostkvd.  In a channel directory every
unix socket in it is served (key = its path), sockets that disappear stop being served.  The
directory is watched with inotify (no wakeups while nothing changes), else rescanned every
``scan_interval`` seconds.
Explicit channels carry no vm.* keys.
"""

import asyncio
import os
import stat

from hostkv.hostkvd.dirwatch import DirectoryWatch


class ExplicitSource(object):
    def __init__(self, paths=(), directories=(), scan_interval=1.0):
        self.paths = [os.path.abspath(p) for p in paths]
        self.directories = [os.path.abspath(d) for d in directories]
        self.scan_interval = scan_interval

    async def run(self, daemon):
        for path in self.paths:
            daemon.add_channel(path, path, label=os.path.basename(path))
        if not self.directories:
            await asyncio.Event().wait()   # nothing to rescan: sleep until cancelled
        watch = DirectoryWatch(self.directories, self.scan_interval)
        try:
            await self._follow(daemon, watch)
        finally:
            watch.close()

    async def _follow(self, daemon, watch):
        served = set()
        while True:
            found = set()
            for directory in self.directories:
                found.update(self._sockets_in(directory))
            for path in sorted(found - served):
                daemon.add_channel(path, path, label=os.path.basename(path))
            for path in sorted(served - found):
                if path not in self.paths:
                    await daemon.remove_channel(path)
            served = found
            await watch.changed()

    @staticmethod
    def _sockets_in(directory):
        try:
            names = os.listdir(directory)
        except OSError:
            return set()
        out = set()
        for name in names:
            path = os.path.join(directory, name)
            try:
                if stat.S_ISSOCK(os.stat(path).st_mode):
                    out.add(path)
            except OSError:
                pass
        return out
