"""Many fake guest ports served from one thread with select (for fault tests with many guests).

``PortSet(dir, n)`` binds ``n`` FakePort listeners (``g00.sock`` ...).  ``wait_snapshots(timeout)``
accepts hostkvd's connection on every port that has none, reads until each port got a
``snapshot`` frame, and returns {port index: (monotonic time of that snapshot, frame)}.
``drain()`` reads whatever is pending without blocking and returns the frames per port;
``drop_all()`` closes the accepted connections (the listeners stay: hostkvd reconnects).
"""

import json
import os
import select
import socket
import time

from tests.harness.fake_port import FakePort


class PortSet(object):
    def __init__(self, directory, n, prefix="g"):
        self.ports = [FakePort(os.path.join(str(directory), "%s%02d.sock" % (prefix, i))) for i in range(n)]
        self.bufs = [b""] * n

    @property
    def paths(self):
        return [p.path for p in self.ports]

    def _read(self, i, frames):
        port = self.ports[i]
        try:
            chunk = port.conn.recv(262144)
        except (BlockingIOError, socket.timeout):
            return
        except OSError:
            chunk = b""
        if not chunk:
            port.drop()
            self.bufs[i] = b""
            return
        self.bufs[i] += chunk
        *lines, self.bufs[i] = self.bufs[i].split(b"\n")
        for line in lines:
            if line.strip():
                frames.setdefault(i, []).append(json.loads(line.decode("utf-8")))

    def wait_snapshots(self, timeout=5.0, want=None):
        """Accept and read until each port in ``want`` (default all) got a snapshot; see module doc."""
        want = set(range(len(self.ports)) if want is None else want)
        got = {}
        deadline = time.monotonic() + timeout
        while want - set(got):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no snapshot within %.1f s on ports %s" % (timeout, sorted(want - set(got))))
            rlist = []
            for i, p in enumerate(self.ports):
                rlist.append(p.conn if p.conn is not None else p.listener)
            ready, _, _ = select.select(rlist, [], [], min(left, 0.05))
            now = time.monotonic()
            for sock in ready:
                i = rlist.index(sock)
                port = self.ports[i]
                if port.conn is None:
                    port.conn, _ = port.listener.accept()
                    port.conn.setblocking(False)
                    self.bufs[i] = b""
                    continue
                frames = {}
                self._read(i, frames)
                for f in frames.get(i, []):
                    if f["op"] == "snapshot" and i not in got and i in want:
                        got[i] = (now, f)
        return got

    def drain(self, settle=0.05):
        frames = {}
        while True:
            socks = [p.conn for p in self.ports if p.conn is not None]
            if not socks:
                return frames
            ready, _, _ = select.select(socks, [], [], settle)
            if not ready:
                return frames
            for sock in ready:
                i = [p.conn for p in self.ports].index(sock)
                self._read(i, frames)

    def drop_all(self):
        for p in self.ports:
            p.drop()
        self.bufs = [b""] * len(self.ports)

    def close(self):
        for p in self.ports:
            p.close()
