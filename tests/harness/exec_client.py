"""The host end of the test guests' exec port (``org.hostkv.test.0``): the one exec client.

The guest side is guest_init/exec_server.py: newline-delimited JSON, requests
``{"id", "cmd": [...] | "sh": "...", "timeout", "stdin"?, "env"?}`` or ``{"op": "ping"}``, replies
``{"id", "rc", "stdout", "stderr", "timed_out"}`` (``{"pong", "init_done", "uptime"}`` for ping).

Contract of :class:`ExecClient`:
  * ``ExecClient(path)``: ``path`` is the host-side chardev socket, or a callable returning it
    (libvirt guests: the path changes on every start/restore/migration, so it is looked up on
    every (re)connect).  ``reconnect_each=True`` opens one connection per command (a guest that
    moves between hosts); otherwise one connection is kept and re-established when it drops.
  * ``run(sh=None, cmd=None, timeout=30, check=False, stdin=None, env=None)`` -> the reply dict
    (rc, stdout, stderr, ...): ``sh`` is shell text, ``cmd`` an argv.  ``call(argv_or_sh,
    timeout=60, stdin=None, check=False, env=None)`` -> ``(rc, stdout, stderr)``: a list runs
    argv, a str ``sh -c`` (QemuGuest.exec).  ``ping(timeout)`` -> bool, ``wait_ready(timeout)`` ->
    the ping reply once the guest's init is done.
  * Every failure (timeout, refusal, a dropped connection, ``check`` and rc != 0) raises
    ``error`` (default :class:`ExecError`, a RuntimeError); socket.timeout never leaks.  A reply
    that arrives after its request timed out is skipped by id.
"""
import json
import socket
import time

MAX_REPLY_BYTES = 64 * 1024 * 1024    # the exec server caps each stream at 4 MiB


class ExecError(RuntimeError):
    """The exec port did not answer as expected; the message says how."""


def exec_request(argv_or_sh, timeout, stdin=None, env=None):
    """The request object for one command (``id`` is added when it is sent)."""
    if isinstance(argv_or_sh, str):
        req = {"sh": argv_or_sh}
    elif isinstance(argv_or_sh, (list, tuple)) and argv_or_sh \
            and all(isinstance(a, str) for a in argv_or_sh):
        req = {"cmd": list(argv_or_sh)}
    else:
        raise TypeError("exec needs a shell string or a non-empty list of str, not %r"
                        % (argv_or_sh,))
    req["timeout"] = timeout
    if stdin is not None:
        req["stdin"] = stdin
    if env:
        req["env"] = dict(env)
    return req


class ExecClient(object):
    """See the module contract."""

    def __init__(self, path, reconnect_each=False, error=ExecError):
        self._path = path
        self.reconnect_each = reconnect_each
        self.error = error
        self._sock = None
        self._buf = b""
        self._next_id = 1

    @property
    def path(self):
        return self._path() if callable(self._path) else self._path

    @property
    def connected(self):
        return self._sock is not None

    def connect(self, timeout=10):
        self.close()
        path = self.path
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                break
            except OSError as err:
                s.close()
                if time.monotonic() > deadline:
                    raise self.error("cannot connect exec socket %s: %s" % (path, err))
                time.sleep(0.05)
        self._sock = s
        self._buf = b""
        s.sendall(b"\n")        # resynchronise framing after any earlier connection

    def reconnect(self, path, timeout=10):
        self._path = path
        self.connect(timeout)

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def request(self, obj, timeout):
        """Send ``obj`` (an id is added) and wait up to ``timeout`` s for its reply."""
        if self._sock is None or self.reconnect_each:
            self.connect(timeout=min(timeout, 10))
        try:
            return self._request(obj, timeout)
        finally:
            if self.reconnect_each:
                self.close()

    def _request(self, obj, timeout):
        rid = "r%d" % self._next_id
        self._next_id += 1
        self._sock.sendall((json.dumps(dict(obj, id=rid)) + "\n").encode())
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                if not line.strip():
                    continue
                try:
                    reply = json.loads(line.decode("utf-8"))
                except ValueError:
                    continue
                if reply.get("id") == rid:
                    return reply
                if reply.get("id") is None and "error" in reply:
                    raise self.error("exec server refused a request: %s" % reply["error"])
            left = deadline - time.monotonic()
            if left <= 0:
                raise self.error("no reply from the guest exec server within %.0f s" % timeout)
            self._sock.settimeout(min(left, 1.0))
            try:
                data = self._sock.recv(1 << 16)
            except socket.timeout:
                continue
            except OSError as err:
                self.close()
                raise self.error("exec connection failed: %s" % err)
            if not data:
                self.close()
                raise self.error("exec socket closed by the other end")
            self._buf += data
            if len(self._buf) > MAX_REPLY_BYTES:
                self.close()
                raise self.error("exec server sent a line over %d bytes" % MAX_REPLY_BYTES)

    def run(self, sh=None, cmd=None, timeout=30.0, check=False, stdin=None, env=None):
        """Run ``sh`` (shell text) or ``cmd`` (argv); return the reply dict (rc, stdout, stderr)."""
        what = sh if sh is not None else list(cmd)
        reply = self.request(exec_request(what, timeout, stdin, env), timeout + 15)
        if "error" in reply:
            raise self.error("exec %r refused: %s" % (what, reply["error"]))
        if not isinstance(reply.get("rc"), int) or not all(
                isinstance(reply.get(k, ""), str) for k in ("stdout", "stderr")):
            raise self.error("malformed exec reply: %r" % (reply,))
        if reply.get("timed_out"):
            raise self.error("exec %r timed out after %s s in the guest;\nstdout: %s\nstderr: %s"
                             % (what, timeout, reply.get("stdout", ""), reply.get("stderr", "")))
        if check and reply["rc"] != 0:
            raise self.error("exec %r exited %d\nstdout: %s\nstderr: %s"
                             % (what, reply["rc"], reply.get("stdout", ""), reply.get("stderr", "")))
        return reply

    def call(self, argv_or_sh, timeout=60, stdin=None, check=False, env=None):
        """Run a command; return ``(rc, stdout, stderr)``."""
        if isinstance(argv_or_sh, str):
            reply = self.run(sh=argv_or_sh, timeout=timeout, check=check, stdin=stdin, env=env)
        else:
            exec_request(argv_or_sh, timeout)          # the same TypeError for a bad argv
            reply = self.run(cmd=argv_or_sh, timeout=timeout, check=check, stdin=stdin, env=env)
        return reply["rc"], reply.get("stdout", ""), reply.get("stderr", "")

    def ping(self, timeout=5.0):
        """True if a command runs in the guest within ``timeout``."""
        try:
            return self.run(cmd=["true"], timeout=timeout)["rc"] == 0
        except (OSError, self.error):
            return False

    def wait_ready(self, timeout=60):
        """Wait until the exec server answers a ping and the guest's init has finished
        (connecting/reconnecting as needed); return the ping reply."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self.error("exec server on %s not answering within %d s" % (self._path, timeout))
            try:
                if self._sock is None:
                    self.connect(timeout=min(left, 5))
                reply = self.request({"op": "ping"}, timeout=min(left, 2))
                if reply.get("pong") and reply.get("init_done", True):
                    return reply
                time.sleep(0.05)
            except self.error:
                time.sleep(0.05)
