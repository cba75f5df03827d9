"""A real QEMU test guest (the image from guest_image.py) driven over QMP and the test exec port.

Contract (everything has a timeout; every failure message ends with the guest console's tail):
  * ``guest = QemuGuest(workdir, channel_path, incoming=None, **options)``; ``guest.start()``
    launches qemu-system-x86_64 (accelerator from accel.py, -m 256, -cpu max, -nodefaults,
    -no-reboot, direct kernel boot) and connects QMP; ``guest.wait_ready(timeout=60)`` returns the
    seconds from start() until the guest's init finished (state disk mounted, agent started) and
    its exec server answered: the boot time (``guest.guest_uptime_at_ready``: the guest's view).
    Start several guests first and wait for them afterwards to boot them in parallel.
  * Devices: one virtio-serial controller ``vser0`` with
      - ``org.hostkv.0`` (nr=1): chardev SOCKET SERVER at ``channel_path`` (server=on, wait=off;
        hostkvd connects as a client, like with libvirt).  ``channel_path=None``: NO hostkv port
        (retrofit tests; add it later with ``hotplug_port``).
      - ``org.hostkv.test.0`` (nr=2): the test exec port, socket ``guest.exec_path``.
    a virtio-blk state disk (ext2, mounted on /var/lib/hostkv by the guest's init) unless
    ``state_disk=None``; default ``<workdir>/state.img``, created if missing and kept by stop(),
    so a new QemuGuest on the same disk is a "reboot" that keeps the agent's cache (``stop()``
    runs ``sync`` in the guest first; ``stop(sync=False)`` is closer to pulling the plug; a reboot
    inside the guest ends QEMU because of -no-reboot).  Two RUNNING guests cannot share a disk
    (QEMU's image lock): give a second guest in the same workdir another ``name`` and
    ``state_disk=None`` or its own path (``make_state_disk(path)`` formats one);
    optional user-mode networking (``user_net=True``: virtio-net, restrict=on so the guest reaches
    nothing but its forwards; guest 10.0.2.15/24) with
    ``guestfwd=[(guest_ip, guest_port, target)]``, target e.g. ``unix_forward(host_unix_socket)``.
  * ``guest.exec(argv_or_sh, timeout=60, stdin=None, check=False) -> (rc, stdout, stderr)``: a list
    runs argv, a str runs ``sh -c``.  ``check=True`` raises GuestError when rc != 0.
    Timeouts raise GuestError; a reply that comes late is discarded by id.
  * ``guest.console_tail(lines=60)``, ``guest.console_path``, ``guest.qmp(cmd, **args)`` (errors:
    QmpError), ``guest.events(name=None)`` / ``guest.wait_event(name, timeout, since)`` (QMP
    events, each with a ``"t"`` time.monotonic() receive time), ``guest.is_running()``,
    ``guest.reconnect_exec()``, ``guest.write_file(path, text, mode=None)`` (atomic),
    ``guest.read_file(path)``, ``guest.wait_until(sh, timeout)`` (poll until exit 0),
    ``guest.hotplug_port(name, socket_path)`` / ``guest.unplug_port(name)``,
    ``guest.stop(sync=True)`` (best-effort ``sync`` in the guest, QMP quit, then SIGKILL; idempotent;
    also a context manager).  ``guest.ports`` lists the virtio-serial ports (for migration).
    Its helpers have modules of their own: the exec port's client (exec_client.py, the one used
    for libvirt guests too), QMP (qmp.py), the state disk (state_disk.py).
  * Options: ``name`` (file name prefix, default "guest"), ``image`` (a GuestImage; default
    build_guest_image()), ``hostname`` (guest host name), ``noagent`` (kernel ``hostkv.noagent=1``),
    ``memory_mib``, ``console_path``, ``cmdline_extra``, ``extra_args``, ``max_lifetime`` (s; QEMU
    runs under ``timeout -s KILL`` so it dies after that even if the test process is killed;
    default 1800).
  * ``tests.harness.exec_client.ExecClient(socket_path)`` is the exec port's host end on its own
    (``.call(...)`` like ``guest.exec``, ``.run(sh=/cmd=)``, ``.wait_ready(timeout)``), for guests
    started by libvirt with the ``org.hostkv.test.0`` channel; the guest-side server is
    guest_init/exec_server.py.
  * ``KERNEL_CMDLINE`` is the base kernel command line (use it for libvirt domains too).
  * Only unix sockets: QMP, exec and migration sockets live in ``workdir`` (or, if that path is
    too long for a unix socket, in a private short temp dir), so several guests and migrations can
    run in one test without races.  Every live QEMU is killed at interpreter exit.
"""

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time

from hostkv.common import paths
from tests.harness import accel
from tests.harness.exec_client import ExecClient, exec_request
from tests.harness.guest_image import build_guest_image
from tests.harness.qmp import QmpConnection
from tests.harness.state_disk import make_state_disk

HOSTKV_PORT = paths.PORT_NAME
EXEC_PORT = "org.hostkv.test.0"
QEMU = os.environ.get("HOSTKV_TEST_QEMU", "qemu-system-x86_64")
_SUN_PATH_MAX = 107
# Console on ttyS0; no legacy keyboard probing, no TSC re-checks: ~1 s less kernel init on TCG.
KERNEL_CMDLINE = ("console=ttyS0 quiet panic=-1 i8042.noaux i8042.nomux i8042.nopnp "
                  "i8042.dumbkbd tsc=reliable no_timer_check mitigations=off")
_live = set()       # guests whose QEMU may still run: killed at interpreter exit


class GuestError(RuntimeError):
    """Something about the test guest failed; the message includes the console tail."""


class QmpError(GuestError):
    """A QMP command failed; ``cause`` is the original exception."""

    def __init__(self, message, cause):
        GuestError.__init__(self, message)
        self.cause = cause


def unix_forward(unix_path):
    """A guestfwd target that connects each guest TCP connection to the host unix socket
    ``unix_path`` (one socat per connection, so many connections work and nothing has to
    listen when QEMU starts).  Use: ``guestfwd=[("10.0.2.100", 80, unix_forward(path))]``."""
    return "cmd:socat STDIO UNIX-CONNECT:%s" % unix_path


def _kill_all_at_exit():
    for g in list(_live):
        try:
            g._kill()
        except Exception:
            pass


atexit.register(_kill_all_at_exit)


# ---------------------------------------------------------------- the guest

class Port(object):
    """A virtio-serial port of a guest: ``name``, ``nr`` (fixed), ``socket_path`` (host side)."""

    def __init__(self, name, nr, socket_path, hotplugged=False, base_path=None):
        self.name = name
        self.nr = nr
        self.socket_path = socket_path
        self.hotplugged = hotplugged
        self.base_path = base_path or socket_path   # the path the test chose (for migration)

    def ids(self):
        return "chr%d" % self.nr, "port%d" % self.nr


class QemuGuest(object):
    """One QEMU process running the test guest.  See the module docstring for the contract."""

    def __init__(self, workdir, channel_path, incoming=None, name="guest", image=None,
                 state_disk="default", hostname="hostkv-guest", noagent=False, memory_mib=256,
                 console_path=None, user_net=False, guestfwd=(), cmdline_extra="",
                 extra_args=(), max_lifetime=1800, ports=None):
        if not os.path.isdir(workdir):
            raise GuestError("workdir %r does not exist" % workdir)
        self.workdir = os.path.abspath(workdir)
        self.name = name
        self.image = image
        self.incoming = incoming
        self.hostname = hostname
        self.noagent = noagent
        self.memory_mib = memory_mib
        self.user_net = user_net or bool(guestfwd)
        self.guestfwd = list(guestfwd)
        self.cmdline_extra = cmdline_extra
        self.extra_args = list(extra_args)
        self.max_lifetime = max_lifetime
        self.console_path = console_path or os.path.join(self.workdir, name + "-console.log")
        self.qemu_log = os.path.join(self.workdir, "%s-qemu.log" % name)
        if state_disk == "default":
            state_disk = os.path.join(self.workdir, "state.img")
        self.state_disk = state_disk
        self._private_sockdir = None
        self.sockdir = self._choose_sockdir()
        self.qmp_path = os.path.join(self.sockdir, name + ".qmp")
        self.exec_path = os.path.join(self.sockdir, name + ".exec")
        self.migrate_path = os.path.join(self.sockdir, name + ".migrate")
        if ports is not None:       # a migration destination: same ports, new socket paths
            self.ports = ports
        else:
            self.ports = []
            if channel_path:
                self.ports.append(Port(HOSTKV_PORT, 1, channel_path))
            self.ports.append(Port(EXEC_PORT, 2, self.exec_path))
        for p in self.ports:
            if p.name == EXEC_PORT:
                p.socket_path = self.exec_path
            self._check_sun_path(p.socket_path)
        self.proc = None
        self._qmp = None
        self._exec = ExecClient(self.exec_path, error=GuestError)
        self.started_at = None
        self.ready_at = None
        self.guest_uptime_at_ready = None     # guest's /proc/uptime when it first answered

    # ------------------------------------------------------------ paths

    @property
    def channel_path(self):
        """Host-side socket of org.hostkv.0, or None if the guest has no such port."""
        for p in self.ports:
            if p.name == HOSTKV_PORT:
                return p.socket_path
        return None

    def _choose_sockdir(self):
        probe = os.path.join(self.workdir, self.name + ".exec-migrate-99")
        if len(probe) <= _SUN_PATH_MAX:
            return self.workdir
        self._private_sockdir = tempfile.mkdtemp(prefix="hkvq-")
        return self._private_sockdir

    @staticmethod
    def _check_sun_path(path):
        if len(path) > _SUN_PATH_MAX:
            raise GuestError("unix socket path is %d bytes, the limit is %d: %s"
                             % (len(path), _SUN_PATH_MAX, path))

    # ------------------------------------------------------------ command line

    def _argv(self):
        img = self.image
        cmdline = "%s hostkv.hostname=%s" % (KERNEL_CMDLINE, self.hostname)
        if self.noagent:
            cmdline += " hostkv.noagent=1"
        if self.cmdline_extra:
            cmdline += " " + self.cmdline_extra
        argv = [QEMU, "-name", "hostkv-test-" + self.name] + accel.qemu_accel_args() + [
            "-machine", "pc", "-cpu", "max", "-smp", "1", "-m", str(self.memory_mib),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", img.kernel, "-initrd", img.initrd, "-append", cmdline,
            "-chardev", "file,id=con0,path=%s,append=on" % self.console_path,
            "-serial", "chardev:con0",
            "-chardev", "socket,id=qmp0,path=%s,server=on,wait=off" % self.qmp_path,
            "-mon", "chardev=qmp0,mode=control",
            "-device", "virtio-serial-pci,id=vser0,max_ports=16",
        ]
        for p in self.ports:
            chr_id, dev_id = p.ids()
            argv += ["-chardev", "socket,id=%s,path=%s,server=on,wait=off" % (chr_id, p.socket_path),
                     "-device", "virtserialport,bus=vser0.0,nr=%d,chardev=%s,name=%s,id=%s"
                     % (p.nr, chr_id, p.name, dev_id)]
        if self.state_disk:
            argv += ["-drive", "file=%s,format=raw,if=none,id=state0,cache=writeback"
                     % self.state_disk, "-device", "virtio-blk-pci,drive=state0,id=statedisk"]
        if self.user_net:
            netdev = "user,id=net0,restrict=on"
            for ip, port, target in self.guestfwd:
                netdev += ",guestfwd=tcp:%s:%d-%s" % (ip, port, target.replace(",", ",,"))
            argv += ["-netdev", netdev, "-device", "virtio-net-pci,netdev=net0,id=nic0"]
        if self.incoming:
            argv += ["-incoming", self.incoming]
        return argv + self.extra_args

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout=30):
        """Launch QEMU and connect QMP (does not wait for the boot: see wait_ready())."""
        if self.proc is not None:
            raise GuestError("guest %s already started" % self.name)
        if self.image is None:
            self.image = build_guest_image()
        if self.state_disk and not self.incoming:
            try:
                make_state_disk(self.state_disk)
            except RuntimeError as err:
                raise GuestError(str(err))
        for p in [self.qmp_path] + [p.socket_path for p in self.ports]:
            if os.path.lexists(p):
                os.unlink(p)
        argv = self._argv()
        if self.max_lifetime:
            # Even if this Python process dies without cleaning up, QEMU cannot outlive this.
            argv = ["timeout", "-s", "KILL", str(int(self.max_lifetime))] + argv
        with open(self.qemu_log, "ab") as log:
            log.write(("\n=== %s %s\n" % (time.strftime("%H:%M:%S"), " ".join(argv))).encode())
            log.flush()
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        _live.add(self)
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive("while waiting for QMP")
            if os.path.exists(self.qmp_path):
                try:
                    self._qmp = QmpConnection(self.qmp_path)
                    break
                except Exception as err:
                    last = err
            else:
                last = "no socket yet"
            if time.monotonic() > deadline:
                self._kill()
                raise GuestError(self._with_tail("QMP of %s not reachable within %d s: %s"
                                                 % (self.name, timeout, last)))
            time.sleep(0.05)
        return self

    def wait_ready(self, timeout=60):
        """Wait until the guest's init has finished (state disk mounted, agent started) and its
        exec server answers; return seconds since start()."""
        if self.proc is None:
            raise GuestError("guest %s not started" % self.name)
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive("while booting")
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuestError(self._with_tail("guest %s not ready within %d s"
                                                 % (self.name, timeout)))
            try:
                if not self._exec.connected:
                    self._exec.connect(timeout=min(left, 5))
                reply = self._exec.request({"op": "ping"}, timeout=min(left, 2))
                if reply.get("pong") and not reply.get("init_done", True):
                    time.sleep(0.05)        # exec server up, init still mounting/starting
                    continue
                if reply.get("pong"):
                    self.ready_at = time.monotonic()
                    self.guest_uptime_at_ready = reply.get("uptime")
                    return self.ready_at - self.started_at
            except GuestError:
                pass    # not booted yet (the request waits in the socket) or reconnecting

    def exec(self, argv_or_sh, timeout=60, stdin=None, check=False, env=None):
        """Run a command in the guest; return (rc, stdout, stderr).  See the module docstring."""
        self._check_alive("before exec")
        try:
            # A reply that arrives after its request timed out is skipped by id later on.
            return self._exec.call(argv_or_sh, timeout, stdin, check, env)
        except GuestError as err:
            raise GuestError(self._with_tail("in guest %s: %s" % (self.name, err)))

    def write_file(self, path, text, mode=None):
        """Atomically write ``text`` (str) to ``path`` in the guest (temp file + rename)."""
        script = 'set -e; t="$1.tmp.$$"; cat > "$t"; [ -z "$2" ] || chmod "$2" "$t"; mv -f "$t" "$1"'
        self.exec(["sh", "-c", script, "sh", path, "%o" % mode if mode is not None else ""],
                  stdin=text, check=True)

    def read_file(self, path):
        """The content of ``path`` in the guest (str); GuestError if it cannot be read."""
        return self.exec(["cat", path], check=True)[1]

    def wait_until(self, sh, timeout=30, interval=0.2):
        """Run shell text ``sh`` in the guest until it exits 0; return its stdout.  GuestError
        (with the last output and the console tail) after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            rc, out, err = self.exec(sh, timeout=max(5, timeout))
            if rc == 0:
                return out
            if time.monotonic() > deadline:
                raise GuestError(self._with_tail("%r still failing after %s s (rc %d)\n"
                                                 "stdout: %s\nstderr: %s"
                                                 % (sh, timeout, rc, out, err)))
            time.sleep(interval)

    def reconnect_exec(self, timeout=10):
        """Reconnect the exec channel (to this guest's exec socket)."""
        self._exec.reconnect(self.exec_path, timeout)

    def qmp(self, _cmd, **args):
        """Execute a QMP command; return its result.  Errors raise QmpError (a GuestError with
        the console tail; ``.cause`` is qemu.qmp's exception, e.g. ExecuteError)."""
        if self._qmp is None:
            raise GuestError("guest %s has no QMP connection" % self.name)
        try:
            return self._qmp.cmd(_cmd, **args)
        except Exception as err:
            raise QmpError(self._with_tail("QMP %s %r on %s failed: %s: %s" % (
                _cmd, args, self.name, type(err).__name__, err)), err)

    def events(self, name=None):
        """QMP events received so far (optionally only those called ``name``)."""
        evs = list(self._qmp.events) if self._qmp else []
        return [e for e in evs if name is None or e.get("event") == name]

    def wait_event(self, name, timeout=30, since=0):
        """Wait for QMP event ``name`` received at/after monotonic time ``since``; return it."""
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events(name):
                if e["t"] >= since:
                    return e
            self._check_alive("waiting for event %s" % name)
            if time.monotonic() > deadline:
                raise GuestError(self._with_tail("no %s event within %d s" % (name, timeout)))
            time.sleep(0.02)

    def is_running(self):
        return self.proc is not None and self.proc.poll() is None

    # ------------------------------------------------------------ hot-plug

    def hotplug_port(self, name, socket_path):
        """chardev-add a unix socket SERVER at ``socket_path`` + device_add a virtserialport
        called ``name``.  Returns the Port.  The guest sees a new /sys/class/virtio-ports/* entry."""
        self._check_sun_path(socket_path)
        if any(p.name == name for p in self.ports):
            raise GuestError("guest %s already has a port named %s" % (self.name, name))
        nr = max([p.nr for p in self.ports] + [2]) + 1
        port = Port(name, nr, socket_path, hotplugged=True)
        chr_id, dev_id = port.ids()
        if os.path.lexists(socket_path):
            os.unlink(socket_path)
        self.qmp("chardev-add", id=chr_id, backend={
            "type": "socket", "data": {"addr": {"type": "unix", "data": {"path": socket_path}},
                                       "server": True, "wait": False}})
        self.qmp("device_add", driver="virtserialport", bus="vser0.0", nr=nr, chardev=chr_id,
                 name=name, id=dev_id)
        self.ports.append(port)
        return port

    def unplug_port(self, name, timeout=30):
        """device_del the port called ``name`` (waits for DEVICE_DELETED), then chardev-remove."""
        port = [p for p in self.ports if p.name == name]
        if not port:
            raise GuestError("guest %s has no port named %s" % (self.name, name))
        port = port[0]
        chr_id, dev_id = port.ids()
        t0 = time.monotonic()
        self.qmp("device_del", id=dev_id)
        deadline = t0 + timeout
        while not any(e.get("data", {}).get("device") == dev_id
                      for e in self.events("DEVICE_DELETED") if e["t"] >= t0):
            if time.monotonic() > deadline:
                raise GuestError(self._with_tail("port %s not deleted within %d s" % (name, timeout)))
            time.sleep(0.02)
        self.qmp("chardev-remove", id=chr_id)
        self.ports.remove(port)

    # ------------------------------------------------------------ teardown & diagnostics

    def stop(self, sync=True, timeout=15):
        """Stop QEMU: optional ``sync`` in the guest, QMP quit, SIGKILL after ``timeout``."""
        if self.proc is not None and self.proc.poll() is None:
            if sync and self._exec.connected:
                try:
                    self._exec.request(exec_request(["sync"], 5), 8)
                except Exception:
                    pass
            try:
                if self._qmp is not None:
                    self._qmp.cmd("quit", _timeout=5)
            except Exception:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self._kill()

    def _kill(self):
        """Kill QEMU now and release everything (idempotent)."""
        self._exec.close()
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        _live.discard(self)
        if self._private_sockdir:
            shutil.rmtree(self._private_sockdir, ignore_errors=True)
            self._private_sockdir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def console_tail(self, lines=60):
        """The last ``lines`` lines of the guest console (a str, '' if none yet)."""
        return _tail(self.console_path, lines)

    def _check_alive(self, what):
        if self.proc is not None and self.proc.poll() is not None:
            raise GuestError(self._with_tail("QEMU (%s) exited with status %s %s"
                                             % (self.name, self.proc.returncode, what)))

    def _with_tail(self, msg):
        return "%s\n--- qemu log (%s) ---\n%s\n--- console tail (%s) ---\n%s" % (
            msg, self.qemu_log, _tail(self.qemu_log, 10), self.console_path, self.console_tail())


def _tail(path, lines):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
