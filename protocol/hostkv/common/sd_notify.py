"""The one way a hostkv daemon talks to systemd's service manager (``Type=notify``).

Contract of :func:`notify(*assignments)`, e.g. ``notify("READY=1", "STATUS=serving 12 guests")``:

* Sends one datagram ``"\\n".join(assignments)`` to ``$NOTIFY_SOCKET`` (sd_notify(3)); a path
  starting with ``@`` is Linux's abstract namespace.  Without ``$NOTIFY_SOCKET`` (not started by
  systemd, or ``Type=simple``) it does nothing and returns False.
* Never raises: a daemon must not die because the manager went away; an OSError returns False.
* Stdlib only, Python 3.6+ (the guest agent ships it): no python3-systemd dependency.
"""

import os
import socket


def notify(*assignments):
    """Send ``KEY=value`` lines to the service manager; True when sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not assignments:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.sendto("\n".join(assignments).encode("utf-8"), address)
        finally:
            sock.close()
    except OSError:
        return False
    return True
