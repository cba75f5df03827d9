"""Simulated libvirt "hosts" on one machine: a real libvirtd per private mount + UTS namespace.

Contract:
  * :class:`LibvirtHost` (``start()`` / ``stop()``, or use it as a context manager) runs ``virtlogd``
    and ``libvirtd`` inside its own ``unshare -m -u`` namespace.  The namespace sees private copies of
    ``/run`` (a fresh dir: pidfiles, ``/run/libvirt``, ``/run/hostkv``), ``/var/lib/libvirt``,
    ``/var/cache/libvirt``, ``/var/log/libvirt`` and ``/etc/libvirt`` (a copy of the machine's, with
    its own ``host_uuid`` and ``stdio_handler = "file"``); its UTS host name is ``hostname``, and
    its private ``/etc/hosts`` (tests/harness/etc_hosts.py) names it, so nothing resolves outward.
    Nothing of the machine's own libvirt state is touched; everything lives under ``basedir``.
  * From outside: ``host.uri`` (``qemu+unix:///system?socket=<basedir>/run/libvirt/libvirt-sock``),
    ``host.open()`` (a new libvirt connection), ``host.outside_path(p)`` (a path seen inside the
    namespace, e.g. a channel socket from the live XML, as reachable from outside).
  * Inside: ``host.run_in_ns(argv)`` / ``host.popen_in_ns(argv)`` run a command in the namespace
    (same host name, same /var/lib/libvirt paths); ``host.start_hostkvd(config_text)`` starts hostkvd
    there (libvirt source; control socket ``host.control_socket``) and returns a started
    hostkvd_proc.HostkvdProcess; ``host.hostkvctl(args)`` runs hostkvctl against this host.
  * ``host.restart_libvirtd()`` stops libvirtd (QEMU guests keep running) and starts it again;
    ``host.freeze_libvirtd()`` / ``thaw_libvirtd()`` SIGSTOP/SIGCONT it (a hung daemon).
  * ``start_guest(host, name, image, workdir)`` -> :class:`LibvirtGuest` (``wait_booted()``,
    ``key(k)``, ``wait_key(k, v)``, ``exec.run(sh=...)`` - exec_client.ExecClient, one
    connection per command; ``guest.host`` = where it runs now);
    ``domain_xml(...)``: direct kernel boot, console to a file (append='on'), the hostkv channel
    and the test exec channel.
  * ``migrate(dom, dst_conn)`` live-migrates over tcp://127.0.0.1.

Layouts (``LibvirtHost(..., layout=...)``, default ``$HOSTKV_TEST_LIBVIRT_LAYOUT`` or "modular"):
  * ``"monolithic"`` -- as EL8 runs libvirt: ``libvirtd`` (+ ``virtlogd``), socket
    ``/run/libvirt/libvirt-sock``.
  * ``"modular"`` -- as EL9/EL10 run it: the QEMU driver's own daemon behind
    ``/run/libvirt/virtqemud-sock`` (``-ro``, ``-admin``) + ``virtlogd``, and ``virtproxyd``
    behind the legacy ``/run/libvirt/libvirt-sock`` (``-ro``) for clients that name no driver
    (e.g. ``openReadOnly(None)``).  A client's ``qemu:///system`` resolves to virtqemud's socket:
    libvirt's remote driver in mode "auto" takes virtqemud-sock when it exists, else libvirt-sock.
    The daemons are the real ``virtqemud`` and ``virtproxyd``: the machine's where it has them
    (EL9), else those that ``scripts/build-virtqemud.sh`` builds from Debian's own source package
    of the installed libvirt (Debian 12 builds but does not ship them; the build is cached, ~3 min
    the first time, and ``scripts/test.sh`` makes it before the tests).  There is no libvirtd in
    this layout.  ``host.daemon`` names the QEMU driver's daemon (virtqemud or libvirtd).

Every failure to start raises :class:`HarnessError` with the daemon's log tail: tests fail loudly.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

from hostkv.common import paths
from tests.harness import PYTHONPATH, REPO, etc_hosts
from tests.harness.exec_client import ExecClient
from tests.harness.waiting import wait_for as _wait_for

PYTHON = os.path.join(REPO, ".venv", "bin", "python")

# The namespace's private view: machine path -> sub dir of basedir.
BIND_DIRS = (
    ("/run", "run"),
    ("/var/lib/libvirt", "lib"),
    ("/var/cache/libvirt", "cache"),
    ("/var/log/libvirt", "log"),
    ("/etc/libvirt", "etc"),
)

LAYOUTS = ("modular", "monolithic")
DEFAULT_LAYOUT = os.environ.get("HOSTKV_TEST_LIBVIRT_LAYOUT", "modular")
_MODULAR = None                   # {"virtqemud": path, "virtproxyd": path}, found once


def modular_daemons():
    """The absolute paths of virtqemud and virtproxyd: the machine's own (EL9 has them in
    /usr/sbin), else the cached build of scripts/build-virtqemud.sh (made now if missing)."""
    global _MODULAR
    if _MODULAR is None:
        found = dict((d, shutil.which(d)) for d in ("virtqemud", "virtproxyd"))
        if not all(found.values()):
            script = os.path.join(REPO, "scripts", "build-virtqemud.sh")
            res = subprocess.run(["bash", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 universal_newlines=True)
            if res.returncode != 0:
                raise HarnessError("the modular layout needs virtqemud; %s failed:\n%s"
                                   % (script, res.stderr[-3000:]))
            build = res.stdout.strip().splitlines()[-1]
            found = dict((d, os.path.join(build, "src", d)) for d in ("virtqemud", "virtproxyd"))
        _MODULAR = found
    return _MODULAR

HOSTKV_PORT = paths.PORT_NAME
TEST_EXEC_PORT = "org.hostkv.test.0"


class HarnessError(RuntimeError):
    """A real component could not be started or driven."""


def _tail(path, n=30, skip=None):
    """The last ``n`` lines of ``path`` (those containing ``skip`` left out)."""
    try:
        with open(path, errors="replace") as f:
            lines = [line for line in f if skip is None or skip not in line]
    except OSError as err:
        return "(no log: %s)" % err
    return "".join(lines[-n:])


def wait_for(predicate, timeout, interval=0.05, what="condition"):
    """tests.harness.waiting.wait_for for the harness: raises HarnessError, errors mean "not yet"."""
    return _wait_for(predicate, timeout, what, interval, error=HarnessError, retry=(Exception,))


def remove_domain(host, name):
    """Destroy (if running) and undefine (if defined) domain ``name`` on LibvirtHost ``host``,
    best effort (a clean-up: a domain that is not there, a libvirt that does not answer, or a
    call that fails is no error)."""
    import libvirt
    try:
        dom = host.conn.lookupByName(name)
        if dom.isActive():
            dom.destroy()
        if dom.isPersistent():
            dom.undefine()
    except libvirt.libvirtError:
        pass


def _set_conf(path, settings):
    """Append ``key = value`` lines (libvirt conf syntax) to ``path``; later lines win."""
    with open(path, "a") as f:
        f.write("\n# hostkv test harness\n")
        for key, value in settings.items():
            f.write("%s = %s\n" % (key, value))


_KEEPER_SCRIPT = r"""
set -e
mount --make-rprivate /
B="$1"; HN="$2"
mount --bind "$B/run" /run
mount --bind "$B/lib" /var/lib/libvirt
mount --bind "$B/cache" /var/cache/libvirt
mkdir -p /var/log/libvirt 2>/dev/null || true
mount --bind "$B/log" /var/log/libvirt
mount --bind "$B/etc" /etc/libvirt
HOSTS_FILE="$B/hosts"; __BIND__
hostname "$HN"
echo ready
exec sleep 2147483647
""".replace("__BIND__", etc_hosts.BIND_SH)


class LibvirtHost(object):
    """One simulated libvirt host (see module docstring)."""

    def __init__(self, name, basedir, hostname=None, host_uuid=None, cache_from=None, layout=None):
        self.name = name
        self.layout = layout or DEFAULT_LAYOUT
        if self.layout not in LAYOUTS:
            raise ValueError("libvirt layout must be one of %s, not %r" % (LAYOUTS, self.layout))
        # the QEMU driver's daemon and every libvirt daemon this host runs, as (name, binary)
        if self.layout == "modular":
            found = modular_daemons()
            self.daemon = "virtqemud"
            self.daemons = [("virtqemud", found["virtqemud"]), ("virtproxyd", found["virtproxyd"])]
        else:
            self.daemon = "libvirtd"
            self.daemons = [("libvirtd", "libvirtd")]
        self.cache_from = cache_from
        self.basedir = os.path.abspath(basedir)
        self.hostname = hostname or "hostkv-test-%s" % name
        self.host_uuid = host_uuid or str(uuid.uuid5(uuid.NAMESPACE_DNS, self.hostname + ".hostkv.test"))
        self.keeper = None
        self.hostkvds = []
        self.control_socket = os.path.join(self.run_dir, "hostkv", "hostkvd.sock")  # the default inside

    # ------------------------------------------------------------ paths
    @property
    def run_dir(self):
        return os.path.join(self.basedir, "run")

    @property
    def libvirt_socket(self):
        """The read-write socket a client on this host reaches for qemu:///system."""
        name = "virtqemud-sock" if self.layout == "modular" else "libvirt-sock"
        return os.path.join(self.run_dir, "libvirt", name)

    @property
    def uri(self):
        return "qemu+unix:///system?socket=%s" % self.libvirt_socket

    @property
    def libvirtd_log(self):
        """The log of this host's libvirt daemon (libvirtd or virtqemud)."""
        return os.path.join(self.basedir, "log", "%s.log" % self.daemon)

    def outside_path(self, path):
        """Translate a path as seen inside the namespace to the same file seen from outside."""
        for inside, sub in BIND_DIRS:
            if path == inside or path.startswith(inside + "/"):
                return os.path.join(self.basedir, sub) + path[len(inside):]
        return path

    # ------------------------------------------------------------ lifecycle
    def _prepare_dirs(self):
        if os.path.exists(self.basedir):
            shutil.rmtree(self.basedir)
        os.makedirs(self.basedir)
        os.chmod(self.basedir, 0o755)
        os.makedirs(os.path.join(self.basedir, "run"), mode=0o755)
        os.makedirs(os.path.join(self.basedir, "log"), mode=0o700)
        etc_hosts.write_hosts(os.path.join(self.basedir, "hosts"), self.hostname)   # its own name, locally
        # Start from the machine's state so ownerships/permissions are what the packages made.
        shutil.copytree("/etc/libvirt", os.path.join(self.basedir, "etc"), symlinks=True)
        for src, sub in (("/var/lib/libvirt", "lib"), ("/var/cache/libvirt", "cache")):
            subprocess.run(["cp", "-a", src, os.path.join(self.basedir, sub)], check=True)
        if self.cache_from is not None:
            # QEMU capability probing costs ~8 s per fresh daemon; libvirt re-validates the cache.
            caps = os.path.join(self.cache_from.basedir, "cache", "qemu", "capabilities")
            if os.path.isdir(caps):
                subprocess.run(["cp", "-a", caps, os.path.join(self.basedir, "cache", "qemu")], check=True)
        etc = os.path.join(self.basedir, "etc")
        # No autostarted networks/guests: they would create bridges in the machine's network.
        for autostart in ("qemu/networks/autostart", "qemu/autostart"):
            path = os.path.join(etc, autostart)
            if os.path.isdir(path):
                for entry in os.listdir(path):
                    os.unlink(os.path.join(path, entry))
        for name, _binary in self.daemons:
            _set_conf(os.path.join(etc, "%s.conf" % name), {
                "host_uuid": '"%s"' % self.host_uuid,
                "log_outputs": '"3:file:/var/log/libvirt/%s.log"' % name,
            })
        # remember_owner=0: both "hosts" relabel the same files (kernel, console log) on one machine;
        # the owner-remembering xattrs would make the second daemon refuse (as on shared storage).
        _set_conf(os.path.join(etc, "qemu.conf"), {"stdio_handler": '"file"', "remember_owner": "0"})

    # What a subclass may change about the namespace (tests/koan adds a network namespace):
    NAMESPACES = ("-m", "-u")          # unshare/nsenter flags: mount + UTS

    def _keeper_script(self):
        """The shell script that sets the namespace up and prints "ready"."""
        return _KEEPER_SCRIPT

    def _keeper_env(self):
        return None

    def start(self, timeout=60):
        """Create the namespace, start virtlogd + libvirtd; return once the API answers."""
        self._prepare_dirs()
        self.keeper = subprocess.Popen(
            ["unshare"] + list(self.NAMESPACES) + ["--propagation", "private", "--", "/bin/sh", "-c",
                                                   self._keeper_script(), "keeper", self.basedir,
                                                   self.hostname],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, env=self._keeper_env())
        line = self.keeper.stdout.readline()
        if line.strip() != b"ready":
            err = self.keeper.stderr.read() if self.keeper.poll() is not None else b""
            self.stop()
            raise HarnessError("namespace for host %s did not come up: %r %r" % (self.name, line, err))
        try:
            self._start_daemons(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_daemons(self, timeout):
        res = self.run_in_ns(["virtlogd", "-d"], capture_output=True)
        if res.returncode != 0:
            raise HarnessError("virtlogd failed to start in %s: %s" % (self.name, res.stderr))
        self._start_libvirtd(timeout)

    def _start_libvirtd(self, timeout):
        """Start this host's libvirt daemons (libvirtd, or virtqemud + virtproxyd, per the layout)."""
        for name, binary in self.daemons:
            if self._pids_named(name):
                continue                 # still running (a restart stops only the QEMU driver's daemon)
            res = self.run_in_ns([binary, "-d"], capture_output=True)
            if res.returncode != 0:
                log = os.path.join(self.basedir, "log", "%s.log" % name)
                raise HarnessError("%s failed to start in %s: %s\n%s"
                                   % (binary, self.name, res.stderr, _tail(log)))
        try:
            wait_for(self._api_answers, timeout, interval=0.1, what="%s of %s" % (self.daemon, self.name))
        except HarnessError as err:
            raise HarnessError("%s\n%s:\n%s" % (err, self.libvirtd_log, _tail(self.libvirtd_log)))

    def _api_answers(self):
        import libvirt
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        if not os.path.exists(self.libvirt_socket):
            return False
        conn = libvirt.open(self.uri)
        try:
            conn.getCapabilities()   # the first call probes QEMU: pay for it here, not in a test
            return True
        finally:
            conn.close()

    @property
    def conn(self):
        """A libvirt connection to this host kept for the harness (reopened after libvirtd restarts)."""
        c = getattr(self, "_conn", None)
        if c is None or not c.isAlive():
            self._conn = c = self.open()
        return c

    def open(self):
        """A new libvirt connection to this host (caller closes it)."""
        import libvirt
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors arrive as exceptions
        return libvirt.open(self.uri)

    def ns_pids(self):
        """PIDs of every process in this host's mount namespace (except the keeper)."""
        if self.keeper is None:
            return []
        try:
            mine = os.readlink("/proc/%d/ns/mnt" % self.keeper.pid)
        except OSError:
            return []
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == self.keeper.pid:
                continue
            try:
                if os.readlink("/proc/%s/ns/mnt" % entry) == mine:
                    pids.append(int(entry))
            except OSError:
                pass
        return pids

    def _pids_named(self, comm):
        out = []
        for pid in self.ns_pids():
            try:
                with open("/proc/%d/comm" % pid) as f:
                    if f.read().strip() == comm:
                        out.append(pid)
            except OSError:
                pass
        return out

    def restart_libvirtd(self, timeout=60, down_seconds=0.0):
        """Stop libvirtd (guests keep running), optionally stay down a while, start it again."""
        self.stop_libvirtd()
        if down_seconds:
            time.sleep(down_seconds)
        self._start_libvirtd(timeout)

    def freeze_libvirtd(self):
        """SIGSTOP libvirtd: a hung daemon whose socket still accepts connections."""
        self.frozen = self._pids_named(self.daemon)
        for pid in self.frozen:
            os.kill(pid, signal.SIGSTOP)

    def thaw_libvirtd(self):
        for pid in getattr(self, "frozen", []):
            os.kill(pid, signal.SIGCONT)
        self.frozen = []

    def stop_libvirtd(self, timeout=20):
        c, self._conn = getattr(self, "_conn", None), None
        if c is not None:
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass
        pids = self._pids_named(self.daemon)
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not any(os.path.exists("/proc/%d" % p) for p in pids), timeout,
                 what="%s of %s to exit" % (self.daemon, self.name))

    def stop(self):
        """Destroy the guests, stop every process in the namespace, remove nothing of the machine's."""
        self.thaw_libvirtd()
        for proc in self.hostkvds:
            proc.stop()
        self._conn = None
        if self.keeper is not None and self.keeper.poll() is None:
            try:
                import libvirt
                conn = libvirt.open(self.uri)
                for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                    try:
                        dom.destroy()
                    except libvirt.libvirtError:
                        pass
                conn.close()
            except Exception:  # noqa: BLE001 - libvirtd may already be gone; processes are killed below
                pass
            for sig in (signal.SIGTERM, signal.SIGKILL):
                pids = self.ns_pids()
                for pid in pids:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and any(os.path.exists("/proc/%d" % p) for p in pids):
                    time.sleep(0.05)
            self.keeper.kill()
            self.keeper.wait()
        if self.keeper is not None:
            for stream in (self.keeper.stdout, self.keeper.stderr):
                if stream:
                    stream.close()
        self.keeper = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------ running things inside
    def ns_prefix(self):
        if self.keeper is None or self.keeper.poll() is not None:
            raise HarnessError("host %s is not running" % self.name)
        return ["nsenter", "-t", str(self.keeper.pid)] + list(self.NAMESPACES) + ["--"]

    def run_in_ns(self, argv, timeout=60, **kwargs):
        """subprocess.run ``argv`` inside the namespace (hostname and libvirt paths of this host)."""
        return subprocess.run(self.ns_prefix() + list(argv), timeout=timeout, **kwargs)

    def popen_in_ns(self, argv, **kwargs):
        return subprocess.Popen(self.ns_prefix() + list(argv), **kwargs)

    def start_hostkvd(self, config_text="", extra_args=()):
        """Start hostkvd inside the namespace (libvirt source, qemu:///system of this host).

        Returns a started tests.harness.hostkvd_proc.HostkvdProcess (``control()``, ``log()``,
        ``wait_log()``, ``stop()``); its config and control socket live in ``<basedir>/hostkvd/``.
        """
        from tests.harness.hostkvd_proc import HostkvdProcess
        proc = HostkvdProcess(os.path.join(self.basedir, "hostkvd"), config_text=config_text,
                              extra_args=["--connect", "qemu:///system"] + list(extra_args),
                              prefix=self.ns_prefix(), python=PYTHON)
        self.hostkvds.append(proc)
        proc.start()
        self.control_socket = proc.control_path
        return proc

    def hostkvctl(self, args, timeout=60, check=False):
        """Run hostkvctl from outside against this host (its libvirt URI and control socket)."""
        argv = [PYTHON, "-m", "hostkv.hostkvctl", "--connect", self.uri,
                "--control-socket", self.control_socket] + list(args)
        env = dict(os.environ, PYTHONPATH=PYTHONPATH)
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        if check and res.returncode != 0:
            raise HarnessError("hostkvctl %s failed (%d): %s%s" % (" ".join(args), res.returncode,
                                                                  res.stdout, res.stderr))
        return res


# ---------------------------------------------------------------- domains

def domain_xml(name, kernel=None, initrd=None, cmdline="console=ttyS0 quiet panic=-1",
               console_log=None, hostkv_channel=True, exec_channel=True, memory_mib=256,
               domain_type="qemu", metadata_xml="", dom_uuid=None):
    """XML of a test guest: direct kernel boot, serial console appended to ``console_log``."""
    from xml.sax.saxutils import escape, quoteattr
    boot = ""
    if kernel:
        boot = "<kernel>%s</kernel>" % escape(kernel)
        if initrd:
            boot += "<initrd>%s</initrd>" % escape(initrd)
        boot += "<cmdline>%s</cmdline>" % escape(cmdline)
    channels = ""
    for enabled, port in ((hostkv_channel, HOSTKV_PORT), (exec_channel, TEST_EXEC_PORT)):
        if enabled:
            channels += ("<channel type='unix'><source mode='bind'/>"
                         "<target type='virtio' name='%s'/></channel>" % port)
    serial = ""
    if console_log:
        serial = ("<serial type='file'><source path=%s append='on'/><target port='0'/></serial>"
                  % quoteattr(console_log))
    return """<domain type='{dtype}'>
  <name>{name}</name>
  {uuid}
  <memory unit='MiB'>{mem}</memory>
  <vcpu>1</vcpu>
  {metadata}
  <os><type arch='x86_64' machine='pc'>hvm</type>{boot}</os>
  <features><acpi/></features>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    {serial}
    {channels}
    <memballoon model='none'/>
  </devices>
</domain>""".format(dtype=domain_type, name=escape(name), mem=memory_mib,
                    uuid="<uuid>%s</uuid>" % dom_uuid if dom_uuid else "",
                    metadata="<metadata>%s</metadata>" % metadata_xml if metadata_xml else "",
                    boot=boot, serial=serial, channels=channels)


def migrate(dom, dst_conn, timeout=120):
    """Live-migrate ``dom`` to ``dst_conn`` (peer-less, over tcp://127.0.0.1); returns the new domain."""
    import libvirt
    flags = libvirt.VIR_MIGRATE_LIVE
    return dom.migrate(dst_conn, flags, None, "tcp://127.0.0.1", 0)


class LibvirtGuest(object):
    """A test guest on a LibvirtHost that can move (migration): ``host`` is where it runs now.

    ``exec`` runs commands in it through the exec channel whose socket path is read from the LIVE
    XML on the current host; ``key(k)`` reads what the agent published for key ``k``.
    """

    def __init__(self, host, name, console_log):
        self.host = host
        self.name = name
        self.console_log = console_log
        self.exec = ExecClient(self._exec_socket, reconnect_each=True, error=HarnessError)

    def dom(self, conn=None):
        conn = conn or self.host.conn
        return conn.lookupByName(self.name)

    def _exec_socket(self):
        """The exec socket from the live XML; the last one seen while libvirtd is down."""
        import libvirt
        from hostkv.common import domain_xml
        if getattr(self.host, "frozen", None) and getattr(self, "_last_exec", None):
            return self._last_exec     # libvirtd is hung: asking it would block
        try:
            xml = self.dom().XMLDesc(0)
        except libvirt.libvirtError:
            if getattr(self, "_last_exec", None) and not self.host._pids_named(self.host.daemon):
                return self._last_exec
            raise
        path, problem = domain_xml.channel_socket_path(xml, TEST_EXEC_PORT)
        if path is None:
            raise HarnessError("guest %s has no usable exec channel: %s" % (self.name, problem))
        self._last_exec = self.host.outside_path(path)
        return self._last_exec

    def hostkv_socket(self):
        from hostkv.common import domain_xml
        return domain_xml.channel_socket_path(self.dom().XMLDesc(0), HOSTKV_PORT)[0]

    def wait_booted(self, timeout=90):
        """Wait until the exec server answers."""
        try:
            wait_for(lambda: self.exec.ping(3.0), timeout, interval=0.2, what="guest %s to boot" % self.name)
        except HarnessError as err:
            raise HarnessError("%s\nconsole:\n%s" % (err, _tail(self.console_log, 40)))

    def key(self, key):
        """The value the agent published for ``key`` (/run/hostkv/keys/KEY), or None if absent."""
        reply = self.exec.run(cmd=["cat", os.path.join(paths.AGENT_RUN_DIR, "keys", key)], timeout=10)
        return reply["stdout"] if reply["rc"] == 0 else None

    def published(self):
        """The agent's /run/hostkv/values.json (seq, host_id, generation, values, ...) or None."""
        import json
        reply = self.exec.run(cmd=["cat", os.path.join(paths.AGENT_RUN_DIR, "values.json")], timeout=10)
        return json.loads(reply["stdout"]) if reply["rc"] == 0 else None

    def wait_key(self, key, value, timeout=10.0, interval=0.05):
        """Wait until the guest publishes ``key`` = ``value``; returns the seconds it took.
        On a timeout the error carries what was published last and the tail of the host's
        hostkvd log (a clean-room run keeps nothing else)."""
        start = time.monotonic()
        seen = []

        def published_value():
            seen[:] = [self.key(key)]
            return seen[0] == value
        try:
            wait_for(published_value, timeout, interval=interval,
                     what="guest %s to see %s=%r" % (self.name, key, value))
        except HarnessError as err:
            raise HarnessError("%s; last published: %r%s" % (err, seen[0] if seen else "?",
                                                             self._hostkvd_tail()))
        return time.monotonic() - start

    def _hostkvd_tail(self, lines=60):
        """hostkvd's own last lines (libvirtaio's per-call DEBUG lines left out: they are most of it)."""
        return "".join("\n--- %s (last %d lines, libvirtaio's left out)\n%s" % (
            proc.log_path, lines, _tail(proc.log_path, lines, skip="virEventAsyncIOImpl"))
            for proc in getattr(self.host, "hostkvds", [])[-1:])

    def console(self):
        return _tail(self.console_log, 60)


def start_guest(host, name, image, workdir, hostkv_channel=True, metadata_values=None, persistent=True,
                cmdline_extra="", exec_channel=True):
    """Define (or create, if not ``persistent``) and start a test guest on ``host``; returns LibvirtGuest.

    ``image`` is a guest_image.GuestImage.  Does not wait for the boot (``guest.wait_booted()``).
    """
    from tests.harness import accel
    from hostkv.common import domain_xml as dx
    console_log = os.path.join(workdir, "%s.console.log" % name)
    meta = dx.metadata_element(metadata_values, namespaced=True) if metadata_values else ""
    xml = domain_xml(name, kernel=image.kernel, initrd=image.initrd,
                     cmdline="console=ttyS0 quiet panic=-1 hostkv.hostname=%s %s" % (name, cmdline_extra),
                     console_log=console_log, hostkv_channel=hostkv_channel, exec_channel=exec_channel,
                     domain_type=accel.libvirt_domain_type(), metadata_xml=meta)
    conn = host.conn
    if persistent:
        dom = conn.defineXML(xml)
        dom.create()
    else:
        conn.createXML(xml, 0)
    return LibvirtGuest(host, name, console_log)


def make_world_readable_dir(prefix="hostkv-lv-"):
    """A temp dir QEMU (user libvirt-qemu) can read and write files in (console logs, kernels)."""
    path = tempfile.mkdtemp(prefix=prefix)
    os.chmod(path, 0o777)
    return path


if __name__ == "__main__":  # manual smoke test: python -m tests.harness.libvirt_hosts
    base = tempfile.mkdtemp(prefix="hostkv-lvh-")
    with LibvirtHost("a", os.path.join(base, "a")) as h:
        c = h.open()
        print(h.uri, c.getHostname(), c.getCapabilities().split("<uuid>")[1].split("<")[0])
        c.close()
    shutil.rmtree(base)
    sys.exit(0)
