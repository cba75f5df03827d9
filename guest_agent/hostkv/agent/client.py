"""Client side of the agent's control socket (used by the ``hostkv`` CLI)."""

import errno
import json
import socket


class AgentUnreachable(Exception):
    """The agent's control socket cannot be reached or the connection broke; ``errno`` is the
    connect error's (EACCES: not permitted, ENOENT/ECONNREFUSED: no agent) or None."""

    def __init__(self, message, errno=None):
        Exception.__init__(self, message)
        self.errno = errno


def request(sock_path, req, timeout=None):
    """Send one request dict, return the reply dict.

    ``timeout`` (seconds, None = wait forever) bounds the whole exchange; raises
    AgentUnreachable on connection problems, socket.timeout if the reply is late.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(5.0 if timeout is None else min(timeout, 5.0))
        try:
            sock.connect(sock_path)
        except (OSError, socket.error) as err:
            reason = err.strerror or str(err)
            if err.errno == errno.EACCES:
                reason += " (the control socket is root-only)"
            raise AgentUnreachable("cannot connect to %s: %s" % (sock_path, reason), err.errno)
        sock.settimeout(timeout)
        try:
            sock.sendall((json.dumps(req) + "\n").encode("utf-8"))
            buf = b""
            while b"\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    raise AgentUnreachable("the agent closed the connection")
                buf += data
        except socket.timeout:
            raise
        except (OSError, socket.error) as err:
            raise AgentUnreachable("connection to %s failed: %s" % (sock_path, err))
        line = buf.split(b"\n", 1)[0]
        try:
            reply = json.loads(line.decode("utf-8"))
        except ValueError:
            raise AgentUnreachable("the agent sent an invalid reply")
        if not isinstance(reply, dict):
            raise AgentUnreachable("the agent sent an invalid reply")
        return reply
    finally:
        sock.close()
