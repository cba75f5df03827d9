"""When to look for a missing port again: kernel uevents, or a timer where there are none.

Contract: ``watcher = HotplugWatcher()``; ``watcher.open()`` returns True if kernel uevents can
be received (then ``fileno()`` is readable when one arrives and ``read()`` says whether it may
concern a virtio port); False: look on a timer instead (``rescan_interval``).  ``close()``
when the port has been found (uevents are not read while a port is open, so none pile up).

Measured in the test guest (Debian 6.1 kernel, busybox, no udev): a NETLINK_KOBJECT_UEVENT
socket bound to multicast group 1 receives, for a hot-plugged port, ``add@.../virtio-ports/
vportNpM`` and then ``change@...`` once its ``name`` attribute exists (virtio_console sends the
change after the host names the port), and ``remove@...`` on unplug; nothing otherwise.  It
needs no udev and no privilege to receive.  A network namespace owned by another user
namespace (an unprivileged container) gets no uevents (kernel source, not measured): there the
socket opens and stays silent - but such a sandbox has no virtio port either.  The agent still
rescans on a timer while the port is missing if the socket cannot be opened, and while the port
exists but cannot be opened (EBUSY: another process has it; no uevent announces its release).
"""

import errno
import socket

NETLINK_KOBJECT_UEVENT = 15
UEVENT_GROUP = 1
_RECV_BYTES = 8192


class HotplugWatcher(object):
    """A non-blocking uevent socket; see the module docstring.  ``subsystem`` None: every
    uevent counts (an explicit ``--device`` may be any kind of device)."""

    def __init__(self, subsystem=b"virtio-ports"):
        self.subsystem = None if subsystem is None else b"SUBSYSTEM=" + subsystem
        self.sock = None

    def open(self):
        """Start receiving uevents; False if this kernel/sandbox gives us none."""
        if self.sock is not None:
            return True
        family = getattr(socket, "AF_NETLINK", None)
        if family is None:
            return False
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM | getattr(socket, "SOCK_CLOEXEC", 0),
                                 NETLINK_KOBJECT_UEVENT)
        except (OSError, socket.error):
            return False
        try:
            sock.bind((0, UEVENT_GROUP))
        except (OSError, socket.error):
            sock.close()
            return False
        sock.setblocking(False)
        self.sock = sock
        return True

    def fileno(self):
        return self.sock.fileno()

    def read(self):
        """Drain the socket; True if any uevent may concern the port (or some were lost)."""
        relevant = False
        while self.sock is not None:
            try:
                msg = self.sock.recv(_RECV_BYTES)
            except (OSError, socket.error) as err:
                if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                    break
                relevant = True              # ENOBUFS: events were dropped; look anyway
                break
            if self.subsystem is None or self.subsystem in msg.split(b"\0"):
                relevant = True
        return relevant

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
