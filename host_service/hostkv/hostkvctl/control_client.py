"""Client of hostkvd's control socket: one newline-JSON request, one reply.

:func:`request` returns the reply dict (it always has ``ok``) or raises :class:`DaemonUnreachable`
when nothing answers at the socket.
"""

import json
import socket

from hostkv.common import paths

DEFAULT_PATH = paths.HOSTKVD_CONTROL_SOCKET
MAX_REPLY = 16 * 1024 * 1024


class DaemonUnreachable(RuntimeError):
    """hostkvd is not running or its control socket is not where we looked."""


def request(path, obj, timeout=10.0):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as err:
            raise DaemonUnreachable("hostkvd is not running (no control socket at %s: %s)"
                                    % (path, err.strerror))
        except PermissionError:
            raise DaemonUnreachable("permission denied on %s: hostkvctl must run as root" % path)
        sock.sendall(json.dumps(obj).encode("utf-8") + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_REPLY:
                raise DaemonUnreachable("reply from hostkvd is larger than %d bytes" % MAX_REPLY)
    except socket.timeout:
        raise DaemonUnreachable("hostkvd did not answer on %s within %.0f s" % (path, timeout))
    finally:
        sock.close()
    if not data:
        raise DaemonUnreachable("hostkvd closed the control connection without answering")
    try:
        reply = json.loads(data.decode("utf-8"))
    except ValueError as err:
        raise DaemonUnreachable("hostkvd sent an unreadable reply: %s" % err)
    if not isinstance(reply, dict) or "ok" not in reply:
        raise DaemonUnreachable("hostkvd sent an unexpected reply: %r" % (reply,))
    return reply
