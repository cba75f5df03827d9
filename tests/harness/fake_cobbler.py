"""A FAKE Cobbler XML-RPC server, for the fast unit tests of hostkvd's Cobbler key source only.

It answers the five read calls the key source makes (``last_modified_time``,
``get_{systems,profiles,distros,images}_since``, ``get_blended_data``) from in-memory records,
blending autoinstall_meta profile -> system the way Cobbler does, and counts every call.  The
behaviour that matters against the real thing (cobblerd 3.3.10: blending, mtimes, the CLI and
XML-RPC edits) is covered by tests/cobbler_live/ with tests/harness/cobbler_server.py.

    fake = FakeCobbler().start()
    fake.url                                  # http://127.0.0.1:PORT/cobbler_api
    fake.profile("p", {"hostkv_vm_tier": "1"}); fake.system("web1", "p", {"hostkv_vm_role": "db"})
    fake.mode = "down" | "garbage" | "401" | "token-fault" | None
    fake.calls["get_blended_data"]            # how many times it was called
"""

import collections
import http.server
import threading
import time
import xmlrpc.client
import xmlrpc.server


class FakeCobbler(object):
    def __init__(self):
        self.profiles = {}     # name -> {"mtime", "meta"}
        self.systems = {}      # name -> {"mtime", "profile", "meta"}
        self.mtime = 1000.0
        self.mode = None
        self.calls = collections.Counter()
        self.lock = threading.Lock()
        self._server = None

    # ------------------------------------------------------------ records
    def _tick(self):
        self.mtime = max(self.mtime + 1.0, time.time())
        return self.mtime

    def profile(self, name, meta):
        with self.lock:
            self.profiles[name] = {"mtime": self._tick(), "meta": dict(meta)}

    def system(self, name, profile, meta):
        with self.lock:
            self.systems[name] = {"mtime": self._tick(), "profile": profile, "meta": dict(meta)}

    def delete_system(self, name):
        with self.lock:
            del self.systems[name]
            self._tick()

    # ------------------------------------------------------------ the calls
    def last_modified_time(self, token=None):
        return self.mtime

    def _since(self, table, mtime):
        return [dict(name=name, **rec) for name, rec in table.items() if rec["mtime"] >= mtime]

    def get_systems_since(self, mtime):
        return self._since(self.systems, mtime)

    def get_profiles_since(self, mtime):
        return self._since(self.profiles, mtime)

    def get_distros_since(self, mtime):
        return []

    def get_images_since(self, mtime):
        return []

    def get_blended_data(self, profile="", system=""):
        if system:
            rec = self.systems.get(system)
            if rec is None:
                raise xmlrpc.client.Fault(1, "<class 'cobbler.cexceptions.CX'>:'system not found: %s'" % system)
            meta = dict(self.profiles.get(rec["profile"], {}).get("meta", {}))
            meta.update(rec["meta"])
            return {"name": system, "profile": rec["profile"], "autoinstall_meta": meta}
        rec = self.profiles.get(profile)
        if rec is None:
            raise xmlrpc.client.Fault(1, "<class 'cobbler.cexceptions.CX'>:'profile not found: %s'" % profile)
        return {"name": profile, "autoinstall_meta": dict(rec["meta"])}

    # ------------------------------------------------------------ serving
    def _dispatch(self, method, params):
        self.calls[method] += 1
        if self.mode == "token-fault":
            raise xmlrpc.client.Fault(1, "<class 'cobbler.cexceptions.CX'>:'invalid token: None'")
        if method.startswith("_") or not hasattr(self, method):
            raise xmlrpc.client.Fault(1, "unknown method %s" % method)
        with self.lock:
            return getattr(self, method)(*params)

    def start(self):
        fake = self

        class Handler(xmlrpc.server.SimpleXMLRPCRequestHandler):
            rpc_paths = ("/cobbler_api",)

            def log_message(self, *args):
                pass

            def do_POST(self):
                if fake.mode == "down":
                    self.close_connection = True
                    self.connection.close()          # like a dead backend behind a proxy: no answer
                    return
                if fake.mode == "garbage":
                    body = b"<html><body>502 Bad Gateway</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if fake.mode == "401":
                    self.send_response(401, "Unauthorized")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                xmlrpc.server.SimpleXMLRPCRequestHandler.do_POST(self)

        class Server(xmlrpc.server.SimpleXMLRPCServer):
            daemon_threads = True

        self._server = Server(("127.0.0.1", 0), requestHandler=Handler, allow_none=True, logRequests=False)
        self._server.register_instance(self)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self):
        return "http://127.0.0.1:%d/cobbler_api" % self._server.server_address[1]

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
