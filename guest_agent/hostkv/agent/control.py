"""Server side of the control socket /run/hostkv/agent.sock (mode 0600).

Wire format: one JSON object per line in each direction.  A client sends a request and
reads one reply line per request; requests on one connection are answered in order.
Replies carry ``"ok": true`` or ``"ok": false, "error": CODE, "message": TEXT``.  The
requests themselves are interpreted elsewhere (requests.py, docs/AGENT.md).

The server is driven by the agent's loop and calls nobody: :meth:`ControlServer.watched`
lists what to wait for, :meth:`ControlServer.on_event` handles readiness and returns events -
:class:`RequestReceived` (answer it with ``client.reply(obj)``, then call
:meth:`ControlServer.resume` for that client's next pipelined request) and
:class:`ClientClosed`.  A client has one request outstanding at a time.  Limits: requests of
at most 64 KiB, at most 64 clients at once; a client breaking them is answered with an
error and disconnected.
"""

import errno
import json
import os
import select
import socket

MAX_REQUEST_BYTES = 64 * 1024
MAX_CLIENTS = 64


def encode_reply(obj):
    return (json.dumps(obj, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")


def error_reply(code, message, **extra):
    reply = {"ok": False, "error": code, "message": message}
    reply.update(extra)
    return reply


class RequestReceived(object):
    __slots__ = ("client", "request")

    def __init__(self, client, request):
        self.client = client
        self.request = request


class ClientClosed(object):
    __slots__ = ("client",)

    def __init__(self, client):
        self.client = client


class ControlClient(object):
    """One connected client.  ``reply(obj)`` answers its current request (``obj``: a dict, or
    one JSON line already encoded, as bytes): the reply is sent at once as far as the socket
    takes it without blocking; the rest waits for POLLOUT."""

    def __init__(self, sock):
        self.sock = sock
        self.inbuf = b""
        self.outbuf = b""
        self.busy = False          # a request is being answered
        self.closed = False
        self.close_after_flush = False

    def fileno(self):
        return self.sock.fileno()

    def reply(self, obj):
        if self.closed:
            return
        self.outbuf += obj if isinstance(obj, bytes) else encode_reply(obj)
        self.busy = False
        self.try_send()

    def try_send(self):
        """Send what the socket takes now; never blocks, never raises (a broken client is
        noticed and dropped by the poll loop)."""
        while self.outbuf:
            try:
                n = self.sock.send(self.outbuf)
            except (OSError, socket.error):
                return
            if not n:
                return
            self.outbuf = self.outbuf[n:]


class ControlServer(object):
    """Listens on ``path`` (see the module docstring for the events it returns)."""

    def __init__(self, path):
        self.path = path
        self.sock = None
        self.clients = {}
        self._events = []

    def open(self):
        """Bind the socket (0600).  Raises RuntimeError if another agent is listening."""
        if os.path.exists(self.path) or os.path.islink(self.path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.settimeout(1.0)
                probe.connect(self.path)
            except (OSError, socket.error):
                os.unlink(self.path)       # left behind by a dead agent
            else:
                raise RuntimeError("another agent is already listening on %s" % self.path)
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        sock.setblocking(False)
        self.sock = sock

    def close(self):
        for client in list(self.clients.values()):
            self._drop(client)
        self._events = []
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def flush_all(self):
        for client in list(self.clients.values()):
            self._flush(client, go_on=False)

    def resume(self, client):
        """``client`` was answered: send what is queued and return its next request (events)."""
        if not client.closed:
            self._flush(client)
        return self._take()

    def watched(self):
        """{fd: (poll events, owner)} to wait on now (owner: the socket or client object)."""
        fds = {}
        if self.sock is not None:
            fds[self.sock.fileno()] = (select.POLLIN, self.sock)
        for fd, client in self.clients.items():
            fds[fd] = (select.POLLIN | (select.POLLOUT if client.outbuf else 0), client)
        return fds

    def owns(self, fd):
        return (self.sock is not None and fd == self.sock.fileno()) or fd in self.clients

    def on_event(self, fd, revents):
        """Handle readiness of ``fd``; returns RequestReceived / ClientClosed events."""
        if self.sock is not None and fd == self.sock.fileno():
            self._accept()
            return self._take()
        client = self.clients.get(fd)
        if client is None:
            return []
        if revents & select.POLLOUT:
            self._flush(client)
        if revents & (select.POLLIN | select.POLLHUP | select.POLLERR | select.POLLNVAL):
            self._read(client)
        return self._take()

    def _take(self):
        events, self._events = self._events, []
        return events

    def _accept(self):
        for _ in range(16):
            try:
                conn, _ = self.sock.accept()
            except (OSError, socket.error) as err:
                if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ECONNABORTED):
                    return
                raise
            conn.setblocking(False)
            client = ControlClient(conn)
            if len(self.clients) >= MAX_CLIENTS:
                client.reply(error_reply("busy", "too many clients (%d)" % MAX_CLIENTS))
                conn.close()
                continue
            self.clients[conn.fileno()] = client

    def _read(self, client):
        try:
            data = client.sock.recv(65536)
        except (OSError, socket.error) as err:
            if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return
            data = b""
        if not data:
            self._drop(client)
            return
        client.inbuf += data
        self._process(client)

    def _process(self, client):
        """Hand out the next buffered request of ``client`` (one at a time, in order)."""
        while not client.busy and not client.closed and b"\n" in client.inbuf:
            line, client.inbuf = client.inbuf.split(b"\n", 1)
            if not line.strip():
                continue
            client.busy = True
            try:
                request = json.loads(line.decode("utf-8"))
                if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                    raise ValueError("a request is a JSON object with a string 'op'")
            except ValueError as err:
                client.reply(error_reply("bad-request", str(err)[:200]))
                continue
            self._events.append(RequestReceived(client, request))
            return
        if len(client.inbuf) > MAX_REQUEST_BYTES:
            client.reply(error_reply("request-too-large", "requests are limited to %d bytes"
                                     % MAX_REQUEST_BYTES))
            client.inbuf = b""
            client.close_after_flush = True
        self._flush(client, go_on=False)

    def _flush(self, client, go_on=True):
        while client.outbuf and not client.closed:
            try:
                n = client.sock.send(client.outbuf)
            except (OSError, socket.error) as err:
                if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                    return
                self._drop(client)
                return
            client.outbuf = client.outbuf[n:]
        if client.close_after_flush and not client.outbuf:
            self._drop(client)
        elif go_on and not client.busy and b"\n" in client.inbuf:
            self._process(client)

    def _drop(self, client):
        if client.closed:
            return
        client.closed = True
        self.clients.pop(client.fileno(), None)
        try:
            client.sock.close()
        except (OSError, socket.error):
            pass
        self._events.append(ClientClosed(client))
