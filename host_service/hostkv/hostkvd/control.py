"""hostkvd's control socket: newline-delimited JSON for hostkvctl, root only.

The socket is created 0600 inside a 0755 directory and every connection's peer credentials
(SO_PEERCRED) are checked: only uid 0 (or the daemon's own uid) is answered.

Requests and replies (one JSON object per line; replies always carry ``ok``):
  {"op": "status"}                              -> {"ok": true, "status": {...}}
  {"op": "host-set", "values": {"host.k": "v"}} -> {"ok": true, "message": "..."}
  {"op": "host-unset", "keys": ["host.k"]}      -> {"ok": true, "message": "..."}
  {"op": "reload"}                              -> {"ok": bool, "message": "..."}
  {"op": "check-vm", "key": "<uuid>", "label": "web1", "values": {"vm.k": "v"}}
                                                -> {"ok": bool, "message"/"error": "..."}
     (would these vm.* keys, with the host's, make a deliverable snapshot? hostkvctl vm set asks
     before it writes; ``key``/``label`` only name the guest in the answer)
host-set/host-unset/reload replies also carry ``pushed``: the served guests that got the change.
Errors: {"ok": false, "error": "<readable message>"}.
"""

import asyncio
import json
import logging
import os
import socket
import struct

from hostkv import protocol
from hostkv.common import paths
from hostkv.hostkvd import config
from hostkv.hostkvd.timeout import within

log = logging.getLogger("hostkvd.control")

DEFAULT_PATH = paths.HOSTKVD_CONTROL_SOCKET
MAX_REQUEST = 64 * 1024


def peer_uid(sock):
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class ControlServer(object):
    def __init__(self, daemon, path=DEFAULT_PATH):
        self.daemon = daemon
        self.path = path
        self._server = None

    async def start(self):
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o755, exist_ok=True)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._client, path=self.path, limit=MAX_REQUEST)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        log.info("control socket at %s", self.path)

    async def close(self):
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            try:
                os.unlink(self.path)
            except OSError:
                pass

    async def _client(self, reader, writer):
        try:
            uid = peer_uid(writer.get_extra_info("socket"))
            if uid not in (0, os.getuid()):
                log.warning("control: refused a connection from uid %d", uid)
                try:   # take the request first, so the refusal is read rather than a reset
                    await within(reader.readline(), 1.0)
                except (ValueError, asyncio.LimitOverrunError):
                    pass
                writer.write(b'{"ok":false,"error":"permission denied: hostkvctl must run as root"}\n')
                await writer.drain()
                return
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(b'{"ok":false,"error":"request too large"}\n')
                    return
                if not line:
                    return
                reply = self.handle(line)
                writer.write(json.dumps(reply).encode("utf-8") + b"\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def handle(self, line):
        try:
            request = json.loads(line.decode("utf-8"))
            if not isinstance(request, dict):
                raise ValueError("request must be a JSON object")
            op = request.get("op")
            if op == "status":
                return {"ok": True, "status": self.daemon.status()}
            if op == "reload":
                ok, message = self.daemon.reload_config()
                return self._result(ok, message)
            if op == "host-set":
                values = request.get("values")
                if not isinstance(values, dict) or not values:
                    raise ValueError("host-set needs a non-empty 'values' object")
                ok, message = self.daemon.set_host_keys(values, ())
                return self._result(ok, message)
            if op == "check-vm":
                values = request.get("values")
                if not isinstance(values, dict):
                    raise ValueError("check-vm needs a 'values' object")
                label = str(request.get("label") or request.get("key") or "the guest")[:200]
                err = self.daemon.vm_values_problem(values)
                if err is not None:
                    return {"ok": False, "error": "refused, nothing changed: it would put %s over a limit: %s"
                            % (label, err)}
                return {"ok": True, "message": "%s: deliverable" % label}
            if op == "host-unset":
                keys = request.get("keys")
                if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
                    raise ValueError("host-unset needs a non-empty 'keys' list")
                unknown = [k for k in keys if k not in self.daemon.config.host_values]
                if unknown:
                    raise ValueError("not set in %s: %s" % (self.daemon.config_path, ", ".join(unknown)))
                ok, message = self.daemon.set_host_keys(None, keys)
                return self._result(ok, message)
            raise ValueError("unknown op %r" % (op,))
        except (ValueError, UnicodeDecodeError, protocol.ProtocolError, config.ConfigError, OSError) as err:
            return {"ok": False, "error": str(err)}

    def _result(self, ok, message):
        if ok:
            return {"ok": True, "message": message, "pushed": self.daemon.last_pushed}
        return {"ok": False, "error": message}
