"""A real cobblerd 3.3.10 for tests, in a private mount namespace; the machine stays untouched.

Contract (from the test's side)::

    with CobblerServer() as cobbler:          # or the session fixture in tests/cobbler/conftest.py
        cobbler.url                           # "http://127.0.0.1:<http_port>"  (the HTTP front)
        cobbler.api_url                       # cobbler.url + "/cobbler_api" (what the CLI and koan use)
        cobbler.http_server                   # "127.0.0.1:<http_port>"  ($http_server in templates)
        cobbler.xmlrpc                        # xmlrpc.client.ServerProxy(api_url, allow_none=True)
        cobbler.token                         # a login token (user cobbler / password cobbler)
        cobbler.cli(["profile", "list"])      # the real `cobbler` CLI, run inside the namespace
        cobbler.run([argv...])                # any command inside the namespace (CompletedProcess)
        cobbler.path("/etc/cobbler/x")        # that namespace path as reachable from this process
        cobbler.restart()                     # restart cobblerd (e.g. after installing a module)
        cobbler.stop_cobblerd(); cobbler.start_cobblerd()   # an outage (the front keeps answering 500)
        cobbler.log_tail()                    # the last lines of cobblerd's + the front's output

What runs where:
  * a *holder* process (``unshare --mount --propagation private``) owns the namespace.  In it,
    overlayfs is mounted over ``/etc``, ``/var``, ``/srv`` and over Cobbler's own package directory
    (``<site-packages>/cobbler``, so modules installed into ``cobbler/modules`` land in the overlay,
    not in the venv).  Every write lands in ``<workdir>/upper/…``; the machine's files are only read.
  * The overlay's upper dirs are pre-populated from the wheel's data files in site-packages (the
    wheel ships ``etc/cobbler``, ``var/lib/cobbler``, ``var/www/cobbler`` there and creates no
    skeleton): ``/etc/cobbler`` (settings.yaml with ``manage_tftpd: false``, ``server: 127.0.0.1``,
    free ``http_port`` and ``xmlrpc_port``), ``/var/lib/cobbler`` (+ ``collections/*``,
    ``triggers/*``), ``/var/www/cobbler`` (+ ``pub``, ``rendered``, ...), ``/var/log/cobbler``.
  * ``cobblerd -F`` (XML-RPC on 127.0.0.1:<xmlrpc_port>) and the *front* (this file run as
    ``front``: a threaded WSGI server on 127.0.0.1:<http_port>) are started with ``nsenter -m`` into
    the holder's namespace.  The front does what Apache does in production: ``/cobbler_api`` is
    proxied to cobblerd's XML-RPC, ``/cblr/svc/…`` is Cobbler's WSGI app
    (``/var/www/cobbler/svc/services.py``), ``/cobbler/…`` serves files under ``/var/www/cobbler``
    (symlinks followed, as Apache's ``FollowSymLinks``).
  * All three processes die with the test process (PR_SET_PDEATHSIG) and are stopped by
    :meth:`CobblerServer.stop`; the mounts exist only inside the namespace, which vanishes with its
    last process, so nothing is ever left mounted on the machine.  The work dir is then removed
    (``keep=True`` keeps it for post-mortems).

cobblerd and the front run without PYTHONPATH (like a production cobblerd); ``run``/``cli`` keep the
caller's environment.  Network: only 127.0.0.1 (ports chosen free at start).  Start takes about 2-3 s.
Every failure to start raises :class:`HarnessError` with the logs' tail: tests fail loudly.
"""

import ctypes
import importlib.util
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xmlrpc.client

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV = os.path.join(REPO, ".venv")
PYTHON = os.path.join(VENV, "bin", "python")
COBBLER_BIN = os.path.join(VENV, "bin", "cobbler")
COBBLERD_BIN = os.path.join(VENV, "bin", "cobblerd")

# Machine directories that get an overlay inside the namespace (the Cobbler package dir is added).
OVERLAID = ("/etc", "/var", "/srv")

COLLECTIONS = ("distros", "profiles", "systems", "images", "repos", "mgmtclasses", "packages",
               "files", "menus")
ITEM_TYPES = ("distro", "profile", "system", "image", "repo", "mgmtclass", "package", "file", "menu")

COBBLER_USER = "cobbler"
COBBLER_PASSWORD = "cobbler"   # the wheel's /etc/cobbler/users.digest


class HarnessError(RuntimeError):
    """cobblerd (or its namespace, or the front) could not be started or driven."""


def _site_packages():
    spec = importlib.util.find_spec("cobbler")
    if spec is None or not spec.origin:
        raise HarnessError("Cobbler is not installed in this Python (%s): run scripts/setup.sh"
                           % sys.executable)
    return os.path.dirname(os.path.dirname(spec.origin))


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    """preexec_fn: SIGKILL this child when the test process dies (survives exec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)   # PR_SET_PDEATHSIG


def _daemon_env():
    """cobblerd's environment: ours without PYTHONPATH (a production cobblerd does not see the
    checkout, so e.g. hostkv's Cobbler modules fall back to their private protocol.py)."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def _tail(path, n=40):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError as err:
        return "(no log: %s)\n" % err


def _populate(upper, site, http_port, xmlrpc_port):
    """Fill the overlay upper dirs with Cobbler's skeleton, as a package install would."""
    import yaml  # Cobbler's own dependency, present in the venv

    etc = os.path.join(upper, "etc", "cobbler")
    shutil.copytree(os.path.join(site, "etc", "cobbler"), etc)
    settings_path = os.path.join(etc, "settings.yaml")
    with open(settings_path) as f:
        settings = yaml.safe_load(f)
    settings.update({
        "manage_tftpd": False, "manage_dhcp": False, "manage_dns": False,
        "server": "127.0.0.1", "next_server_v4": "127.0.0.1",
        "http_port": http_port, "xmlrpc_port": xmlrpc_port,
    })
    with open(settings_path, "w") as f:
        yaml.safe_dump(settings, f, default_flow_style=False)

    lib = os.path.join(upper, "var", "lib", "cobbler")
    shutil.copytree(os.path.join(site, "var", "lib", "cobbler"), lib)
    for sub in COLLECTIONS:
        os.makedirs(os.path.join(lib, "collections", sub))
    for sub in ("loaders", "kickstarts", "isos"):
        os.makedirs(os.path.join(lib, sub), exist_ok=True)
    triggers = os.path.join(lib, "triggers")
    for what in ITEM_TYPES:
        for when in ("pre", "post"):
            os.makedirs(os.path.join(triggers, "add", what, when))
            os.makedirs(os.path.join(triggers, "delete", what, when))
    for sub in ("sync/pre", "sync/post", "change", "install/pre", "install/post",
                "install/firstboot", "task/sync/pre", "task/sync/post"):
        os.makedirs(os.path.join(triggers, sub), exist_ok=True)

    www = os.path.join(upper, "var", "www", "cobbler")
    shutil.copytree(os.path.join(site, "var", "www", "cobbler"), www)
    for sub in ("pub", "rendered", "links", "images", "distro_mirror", "repo_mirror",
                "repo_profile", "repo_system", "localmirror"):
        os.makedirs(os.path.join(www, sub), exist_ok=True)
    for d in (("var", "log", "cobbler", "tasks"), ("var", "log", "cobbler", "anamon"),
              ("var", "cache", "cobbler"), ("srv", "tftpboot")):
        os.makedirs(os.path.join(upper, *d), exist_ok=True)


class CobblerServer:
    """A real cobblerd + HTTP front in a private mount namespace.  See the module docstring."""

    def __init__(self, workdir=None, keep=False, start_timeout=60):
        self.keep = keep
        self.start_timeout = start_timeout
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="hostkv-cobbler-")
        self.site = _site_packages()
        self.package_dir = os.path.join(self.site, "cobbler")
        self.http_port = None
        self.xmlrpc_port = None
        self.holder = None
        self.cobblerd = None
        self.front = None
        self._token = None
        self._xmlrpc = None
        self._extra = []

    # ------------------------------------------------------------ addresses
    @property
    def http_server(self):
        return "127.0.0.1:%d" % self.http_port

    @property
    def url(self):
        return "http://%s" % self.http_server

    @property
    def api_url(self):
        return self.url + "/cobbler_api"

    @property
    def xmlrpc(self):
        """A ServerProxy on ``api_url`` (through the front, like the CLI and koan)."""
        if self._xmlrpc is None:
            self._xmlrpc = xmlrpc.client.ServerProxy(self.api_url, allow_none=True)
        return self._xmlrpc

    @property
    def token(self):
        """A login token for the ``cobbler`` user (refreshed after :meth:`restart`)."""
        if self._token is None:
            self._token = self.xmlrpc.login(COBBLER_USER, COBBLER_PASSWORD)
        return self._token

    def path(self, p):
        """Path ``p`` as seen inside the namespace, reachable from this process (via /proc/PID/root)."""
        if not p.startswith("/"):
            raise ValueError("path() wants an absolute path inside the namespace, got %r" % p)
        return "/proc/%d/root%s" % (self.holder.pid, p)

    # ------------------------------------------------------------ running things inside
    def _ns(self, argv):
        return ["nsenter", "--target", str(self.holder.pid), "--mount", "--"] + list(argv)

    def run(self, argv, check=False, timeout=120, input=None, env=None):
        """Run ``argv`` inside the namespace; returns CompletedProcess (text, stdout+stderr split).

        ``check=True`` raises HarnessError with the output when the exit status is not 0."""
        proc = subprocess.run(self._ns(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=timeout, input=input, env=env,
                              cwd="/")
        if check and proc.returncode != 0:
            raise HarnessError("%s exited %d\nstdout:\n%s\nstderr:\n%s"
                               % (" ".join(argv), proc.returncode, proc.stdout, proc.stderr))
        return proc

    def cli(self, args, check=True, timeout=120):
        """The real ``cobbler`` CLI with ``args`` inside the namespace (``check`` as in :meth:`run`)."""
        return self.run([PYTHON, COBBLER_BIN] + list(args), check=check, timeout=timeout)

    def popen(self, argv, **kw):
        """Start a long-running process inside the namespace; it is killed by :meth:`stop`."""
        kw.setdefault("preexec_fn", _die_with_parent)
        proc = subprocess.Popen(self._ns(argv), **kw)
        self._extra.append(proc)
        return proc

    # ------------------------------------------------------------ lifecycle
    def start(self):
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self):
        self.http_port = _free_port()
        self.xmlrpc_port = _free_port()
        while self.xmlrpc_port == self.http_port:
            self.xmlrpc_port = _free_port()
        upper = os.path.join(self.workdir, "upper")
        _populate(upper, self.site, self.http_port, self.xmlrpc_port)
        mounts = []
        for target in OVERLAID + (self.package_dir,):
            name = target.strip("/").replace("/", "_")
            up = os.path.join(upper, target.strip("/")) if target in OVERLAID \
                else os.path.join(self.workdir, "upper-pkg")
            work = os.path.join(self.workdir, "work", name)
            os.makedirs(up, exist_ok=True)
            os.makedirs(work, exist_ok=True)
            mounts.append("%s=%s=%s" % (target, up, work))
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--",
             PYTHON, os.path.abspath(__file__), "holder"] + mounts,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            universal_newlines=True, preexec_fn=_die_with_parent)
        ready, _, _ = select.select([self.holder.stdout], [], [], self.start_timeout)
        line = self.holder.stdout.readline() if ready else "(no answer in %ss)" % self.start_timeout
        if line.strip() != "READY":
            rest = line + self.holder.stdout.read() if self.holder.poll() is not None else line
            raise HarnessError("the namespace holder did not come up: %s" % rest)
        self._start_cobblerd()
        log = open(os.path.join(self.workdir, "front.log"), "ab")
        self.front = subprocess.Popen(
            self._ns([PYTHON, os.path.abspath(__file__), "front", str(self.http_port),
                      str(self.xmlrpc_port)]),
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent, cwd="/",
            env=_daemon_env())
        log.close()
        self._wait_ready()

    def _start_cobblerd(self):
        log = open(os.path.join(self.workdir, "cobblerd.log"), "ab")
        self.cobblerd = subprocess.Popen(
            self._ns([PYTHON, COBBLERD_BIN, "-F"]), stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent, cwd="/", env=_daemon_env())
        log.close()

    def _wait_ready(self):
        deadline = time.monotonic() + self.start_timeout
        last = None
        while time.monotonic() < deadline:
            for name, proc in (("cobblerd", self.cobblerd), ("front", self.front)):
                if proc.poll() is not None:
                    raise HarnessError("%s exited with %s during start\n%s"
                                       % (name, proc.returncode, self.log_tail()))
            try:
                proxy = xmlrpc.client.ServerProxy(self.api_url)
                if proxy.ping():
                    self._token = None
                    self._xmlrpc = None
                    return
            except (OSError, xmlrpc.client.Error) as err:
                last = err
            time.sleep(0.1)
        raise HarnessError("cobblerd did not answer on %s within %ss (%s)\n%s"
                           % (self.api_url, self.start_timeout, last, self.log_tail()))

    def restart(self):
        """Restart cobblerd in the same namespace (modules are only loaded at start)."""
        self.stop_cobblerd()
        self.start_cobblerd()

    def stop_cobblerd(self):
        """Stop cobblerd only: the HTTP front stays and answers 500, as Apache's proxy does."""
        self._terminate(self.cobblerd)

    def start_cobblerd(self):
        """Start cobblerd again (after :meth:`stop_cobblerd`); returns once XML-RPC answers."""
        self._start_cobblerd()
        self._wait_ready()

    def log_tail(self, n=40):
        return ("--- cobblerd.log\n" + _tail(os.path.join(self.workdir, "cobblerd.log"), n)
                + "--- front.log\n" + _tail(os.path.join(self.workdir, "front.log"), n))

    @staticmethod
    def _terminate(proc, timeout=10):
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self):
        for proc in self._extra + [self.front, self.cobblerd]:
            self._terminate(proc)
        if self.holder is not None and self.holder.poll() is None:
            try:
                self.holder.stdin.close()       # the holder exits on EOF; the namespace goes with it
                self.holder.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self._terminate(self.holder)
        if self.holder is not None:
            self.holder.stdout.close()
        if self._own_workdir and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# ---------------------------------------------------------------- inside the namespace

def _holder_main(specs):
    """Mount the overlays (``target=upper=work``), print READY, live until stdin closes."""
    for spec in specs:
        target, up, work = spec.split("=")
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        "lowerdir=%s,upperdir=%s,workdir=%s" % (target, up, work), target],
                       check=True)
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    sys.stdin.read()
    return 0


def _front_app(xmlrpc_port):
    import urllib.request

    spec = importlib.util.spec_from_file_location("cobbler_svc_services",
                                                  "/var/www/cobbler/svc/services.py")
    services = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(services)
    webroot = os.path.realpath("/var/www/cobbler")

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        method = environ["REQUEST_METHOD"]
        if path.rstrip("/") == "/cobbler_api":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            req = urllib.request.Request("http://127.0.0.1:%d/" % xmlrpc_port, data=body,
                                         headers={"Content-Type": "text/xml"})
            with urllib.request.urlopen(req, timeout=600) as resp:
                data = resp.read()
            start_response("200 OK", [("Content-Type", "text/xml"),
                                      ("Content-Length", str(len(data)))])
            return [data]
        if path.startswith("/cblr/svc/"):
            environ["REQUEST_URI"] = path
            return services.application(environ, start_response)
        if path.startswith("/cobbler/") and method in ("GET", "HEAD"):
            # no ".." escapes (like Apache); symlinks inside are followed (FollowSymLinks)
            real = os.path.normpath(os.path.join(webroot, path[len("/cobbler/"):]))
            if real.startswith(webroot + "/") and os.path.isfile(real):
                with open(real, "rb") as f:
                    data = f.read()
                start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                          ("Content-Length", str(len(data)))])
                return [data] if method == "GET" else [b""]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    return app


def _front_main(http_port, xmlrpc_port):
    import socketserver
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Server(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class Quiet(WSGIRequestHandler):
        def log_message(self, fmt, *args):
            sys.stderr.write("front: " + (fmt % args) + "\n")

    httpd = make_server("127.0.0.1", int(http_port), _front_app(int(xmlrpc_port)),
                        server_class=Server, handler_class=Quiet)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    httpd.serve_forever()


if __name__ == "__main__":
    if sys.argv[1:2] == ["holder"]:
        sys.exit(_holder_main(sys.argv[2:]))
    if sys.argv[1:2] == ["front"]:
        sys.exit(_front_main(*sys.argv[2:4]))
    sys.exit("usage: cobbler_server.py holder SPEC... | front HTTP_PORT XMLRPC_PORT")
