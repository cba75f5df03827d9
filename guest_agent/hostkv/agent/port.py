"""Find and open the virtio-serial port and tell connect, disconnect and unplug apart.

Finding (:class:`PortLocator`), in order:
  1. ``device`` if one was given explicitly (nothing else is tried);
  2. ``<dev_dir>/virtio-ports/<port_name>`` (the udev symlink);
  3. ``<sysfs_dir>/*/name`` (``/sys/class/virtio-ports``) equal to ``port_name``, then
     ``<dev_dir>/<entry>`` (e.g. ``/dev/vport1p1``); if that node is missing (no devtmpfs)
     a private character device node is made in ``node_dir`` from ``<entry>/dev``.
The port is opened ``O_RDWR | O_NONBLOCK``.  When to look again is hotplug.py's job.

Semantics of an open virtio port (measured in the test guest, Debian 6.1.0 kernel 6.1.192,
QEMU 7.2, TCG; see docs/AGENT.md):
  * host side not connected: poll reports POLLHUP (with POLLIN), read() returns 0; this is
    level-triggered: a poll() loop on it would spin;
  * host (re)connects: POLLHUP clears and POLLOUT appears;
  * port hot-unplugged: read()/write() fail with ENODEV (or EIO): :class:`PortGone`.
The kernel wakes the port's wait queue on each of these edges and when data arrives, and on
nothing else (virtio_console.c: ``wake_up_interruptible(&port->waitqueue)`` next to
``send_sigio_to_port()`` in the PORT_OPEN control message, in_intr() and unplug_port()):
  * epoll with EPOLLET on the port reports exactly one event per edge: host connect (OUT),
    data (IN|OUT), host disconnect (IN|HUP), unplug (HUP, then read() -> ENODEV); nothing at
    all while the host stays away or stays connected and quiet (0 wakeups in 3 s each);
  * an ``O_ASYNC`` owner gets SIGIO on the same four edges (measured too; not used: epoll
    needs no signal handler, works in any thread and tells the edges apart the same way).
So a port found through sysfs is watched edge-triggered and never probed on a timer
(``Port.wakes`` True).  This code is in virtio_console.c since Linux 2.6.35 (2010; EL8's
4.18, EL9's 5.14 and EL10's 6.12 have it: from the source, measured only on 6.1).  A node
that is not a virtio port (``--device`` pointing elsewhere, e.g. a pty) gets
``wakes`` False and the old backoff probe (50 ms doubling to 1 s) while the host is away.
"""

import errno
import os
import select
import stat

CONNECTED = "connected"
DISCONNECTED = "disconnected"

_GONE_ERRNOS = (errno.ENODEV, errno.EIO, errno.ENXIO, errno.EBADF, errno.EPIPE)
_OPEN_FLAGS = os.O_RDWR | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)


class PortGone(Exception):
    """The port disappeared (hot-unplug) or became unusable; close it and look again."""


class Port(object):
    """An open virtio-serial port (any fd with the same poll/read semantics works).

    ``wakes``: the kernel wakes a waiter on every connect/disconnect edge (a virtio port):
    watch :meth:`fileno` edge-triggered; False: probe on a timer while the host is away."""

    def __init__(self, fd, path, wakes=True):
        self.fd = fd
        self.path = path
        self.wakes = wakes
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN | select.POLLOUT)

    def fileno(self):
        return self.fd

    def probe(self):
        """Non-blocking check: CONNECTED or DISCONNECTED; raises PortGone.

        While the host is away any bytes still buffered are read and thrown away (they
        belong to a connection that is over).
        """
        try:
            events = self._poll.poll(0)
        except (OSError, select.error) as err:
            raise PortGone("poll on %s failed: %s" % (self.path, err))
        revents = events[0][1] if events else 0
        if revents & select.POLLNVAL:
            raise PortGone("%s: file descriptor is no longer valid" % self.path)
        if revents & (select.POLLHUP | select.POLLERR):
            for _ in range(64):
                data = self.read()       # raises PortGone after a hot-unplug
                if not data:             # b"" (host away) or None (nothing buffered)
                    break
            return DISCONNECTED
        return CONNECTED

    def read(self, size=65536):
        """Bytes read; b"" if the host is not connected; None if nothing to read now."""
        try:
            return os.read(self.fd, size)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return None
            if err.errno in _GONE_ERRNOS:
                raise PortGone("%s: %s" % (self.path, err.strerror))
            raise PortGone("%s: read failed: %s" % (self.path, err.strerror))

    def write(self, data):
        """Write what fits now; returns the number of bytes written (0 if it would block)."""
        try:
            return os.write(self.fd, data)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return 0
            raise PortGone("%s: write failed: %s" % (self.path, err.strerror))

    def close(self):
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


def _read_text(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace").strip()
    except (IOError, OSError):
        return None


class PortLocator(object):
    """Finds the port by name and opens it.  ``locate()`` never blocks.

    ``opener(path) -> fd`` is replaceable for tests (default: os.open with O_RDWR|O_NONBLOCK).
    ``last_reason`` says, for logs, why the last ``locate()`` found nothing;
    ``last_open_failed`` whether it found the port but could not open it (e.g. EBUSY).
    """

    def __init__(self, port_name, device=None, dev_dir="/dev", sysfs_dir="/sys/class/virtio-ports",
                 node_dir=None, opener=None):
        self.port_name = port_name
        self.device = device
        self.dev_dir = dev_dir
        self.sysfs_dir = sysfs_dir
        self.node_dir = node_dir
        self.opener = opener or (lambda path: os.open(path, _OPEN_FLAGS))
        self.last_reason = None
        self.last_wakes = True       # what the last find() learnt: is it a virtio port?
        self.last_open_failed = False    # the last locate() found the port but could not open it

    def find(self):
        """Path of the port's device node, or None (sets ``last_reason``)."""
        self.last_wakes = True
        if self.device:
            if os.path.exists(self.device):
                self.last_wakes = self._is_virtio_node(self.device)
                return self.device
            self.last_reason = "device %s does not exist" % self.device
            return None
        link = os.path.join(self.dev_dir, "virtio-ports", self.port_name)
        if os.path.exists(link):
            return link
        try:
            entries = sorted(os.listdir(self.sysfs_dir))
        except OSError:
            entries = []
        for entry in entries:
            if _read_text(os.path.join(self.sysfs_dir, entry, "name")) != self.port_name:
                continue
            node = os.path.join(self.dev_dir, entry)
            if os.path.exists(node):
                return node
            made = self._make_node(entry)
            if made:
                return made
            self.last_reason = ("port %s is %s in sysfs but %s does not exist (mount devtmpfs on %s)"
                                % (self.port_name, entry, node, self.dev_dir))
            return None
        self.last_reason = "port %s not present (no %s, no match in %s/*/name)" % (
            self.port_name, link, self.sysfs_dir)
        return None

    def _is_virtio_node(self, path):
        """True if ``path`` is the character device of an entry in sysfs_dir (a virtio port)."""
        try:
            rdev = os.stat(path).st_rdev
            entries = os.listdir(self.sysfs_dir)
        except OSError:
            return False
        for entry in entries:
            dev = _read_text(os.path.join(self.sysfs_dir, entry, "dev")) or ""
            try:
                major, minor = [int(x) for x in dev.split(":")]
            except ValueError:
                continue
            if os.makedev(major, minor) == rdev:
                return True
        return False

    def _make_node(self, entry):
        """Make a private char device node for ``entry`` in node_dir; path or None."""
        if not self.node_dir:
            return None
        dev = _read_text(os.path.join(self.sysfs_dir, entry, "dev"))
        try:
            major, minor = [int(x) for x in dev.split(":")]
        except (AttributeError, ValueError):
            return None
        path = os.path.join(self.node_dir, ".port-%s" % entry)
        try:
            st = os.stat(path)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(major, minor):
                return path
            os.unlink(path)
        except OSError:
            pass
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(major, minor))
        except OSError:
            return None
        return path

    def locate(self):
        """Find and open the port: a :class:`Port`, or None (see ``last_reason``)."""
        self.last_open_failed = False
        path = self.find()
        if path is None:
            return None
        try:
            fd = self.opener(path)
        except OSError as err:
            self.last_open_failed = True
            if err.errno == errno.EBUSY:
                self.last_reason = "%s is busy (another process has the port open)" % path
            else:
                self.last_reason = "cannot open %s: %s" % (path, err.strerror)
            return None
        return Port(fd, path, wakes=self.last_wakes)
