"""A unix socket server standing in for QEMU's chardev server of a guest port (fast tests only).

hostkvd connects to it exactly as it connects to QEMU; the test plays the guest: it reads what
hostkvd pushes and writes requests.  The real thing is exercised by the VM tests.
"""

import json
import os
import socket
import time


class FakePort(object):
    def __init__(self, path):
        self.path = str(path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(1)
        self.conn = None
        self.buf = b""

    def accept(self, timeout=10):
        self.listener.settimeout(timeout)
        self.conn, _ = self.listener.accept()
        self.buf = b""
        return self

    def send(self, data):
        if isinstance(data, dict):
            data = json.dumps(data).encode() + b"\n"
        self.conn.sendall(data)

    def frame(self, timeout=10, skip_blank=True):
        """The next frame (dict) hostkvd sent; AssertionError on timeout or EOF."""
        deadline = time.monotonic() + timeout
        while True:
            if b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                if line.strip() or not skip_blank:
                    return json.loads(line.decode())
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no frame from hostkvd within %.1f s" % timeout)
            self.conn.settimeout(left)
            try:
                chunk = self.conn.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise AssertionError("hostkvd closed the channel")
            self.buf += chunk

    def frame_where(self, pred, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            f = self.frame(max(0.01, deadline - time.monotonic()))
            if pred(f):
                return f

    def drop(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def close(self):
        self.drop()
        self.listener.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
