"""Raw-QEMU live migration of a QemuGuest on this one machine (no libvirt).

Contract:
  * ``dst = make_destination(src, channel_path, name=None)``: a NOT yet started QemuGuest with
    the same devices (same virtio-serial ports with the same ``nr``, including hot-plugged ones,
    same state disk and console log, which it appends to), a DIFFERENT hostkv channel socket
    (``channel_path``; ignored if the source has no hostkv port) and exec socket, and
    ``-incoming unix:<sockdir>/<name>.migrate``.  Other hot-plugged ports get the socket
    ``<the path given to hotplug_port>.<dst name>`` (see ``dst.ports``).
  * ``result = migrate(src, dst, timeout=120, stop_source=True)`` starts ``dst`` if needed, runs
    QMP ``migrate`` on ``src``, polls ``query-migrate`` until ``completed`` (GuestError on
    ``failed``/``cancelled``/timeout, with both consoles' tails), waits for the destination's
    RESUME event, stops the source (unless ``stop_source=False``) and reconnects the exec channel
    to ``dst``, checking that the exec server answers.  Returns a :class:`MigrationResult`.
  * ``MigrationPair(guest, channel_a, channel_b)`` ping-pongs one guest between two "hosts"
    (channel socket paths): ``pair.hop()`` migrates to the other side and returns the result;
    ``pair.guest`` is the live QemuGuest, ``pair.channel_path`` its current hostkv socket,
    ``pair.results`` all hops.  Each hop creates a fresh destination QEMU.
All times are wall clock (time.monotonic()); query-migrate's own figures are kept as reported.
"""

import re
import time

from tests.harness.qemu_guest import EXEC_PORT, HOSTKV_PORT, GuestError, Port, QemuGuest


class MigrationResult(object):
    """Timings of one migration, in seconds from the QMP ``migrate`` command.

    ``completed_s``: until query-migrate said completed; ``resumed_s``: until the destination's
    RESUME event (the guest runs again); ``exec_back_s``: until the exec server answered on
    the destination; ``downtime_ms`` / ``total_time_ms``: QEMU's own figures (may be 0/None);
    ``resumed_at``: time.monotonic() of the RESUME; ``src_name``/``dst_name``.
    """

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def __repr__(self):
        return ("MigrationResult(%s -> %s: completed %.3f s, resumed %.3f s, exec back %.3f s, "
                "downtime %s ms)" % (self.src_name, self.dst_name, self.completed_s,
                                     self.resumed_s, self.exec_back_s, self.downtime_ms))


_counter = [0]


def make_destination(src, channel_path, name=None):
    """A QemuGuest configured as the incoming side of a migration of ``src`` (not started)."""
    _counter[0] += 1
    name = name or "%s-m%d" % (re.sub(r"-m\d+$", "", src.name), _counter[0])
    ports = []
    for p in src.ports:
        if p.name == HOSTKV_PORT:
            path = channel_path
        elif p.name == EXEC_PORT:
            path = None                 # QemuGuest fills in its own exec socket
        else:
            path = "%s.%s" % (p.base_path, name)
        ports.append(Port(p.name, p.nr, path, p.hotplugged, p.base_path))
    dst = QemuGuest(src.workdir, channel_path, name=name, image=src.image,
                    state_disk=src.state_disk, hostname=src.hostname, noagent=src.noagent,
                    memory_mib=src.memory_mib, console_path=src.console_path,
                    user_net=src.user_net, guestfwd=src.guestfwd,
                    cmdline_extra=src.cmdline_extra, extra_args=src.extra_args,
                    max_lifetime=src.max_lifetime, ports=ports)
    dst.incoming = "unix:%s" % dst.migrate_path
    return dst


def migrate(src, dst, timeout=120, stop_source=True, exec_timeout=30):
    """Live-migrate ``src`` into ``dst`` (see the module docstring); return MigrationResult."""
    if not src.is_running():
        raise GuestError("migration source %s is not running" % src.name)
    if dst.proc is None:
        dst.start()
    status = dst.qmp("query-status")
    if status.get("status") != "inmigrate":
        raise GuestError("destination %s is %r, not inmigrate" % (dst.name, status))
    t0 = time.monotonic()
    src.qmp("migrate", uri=dst.incoming)
    deadline = t0 + timeout
    info = {}
    while True:
        info = src.qmp("query-migrate")
        state = info.get("status")
        if state == "completed":
            t_completed = time.monotonic()
            break
        if state in ("failed", "cancelled"):
            raise GuestError("migration %s -> %s %s: %s\n%s" % (
                src.name, dst.name, state, info.get("error-desc", info),
                dst._with_tail("destination:")))
        if time.monotonic() > deadline:
            try:
                src.qmp("migrate_cancel")
            except Exception:
                pass
            raise GuestError(src._with_tail("migration %s -> %s not completed within %d s: %r"
                                            % (src.name, dst.name, timeout, info)))
        time.sleep(0.02)
    resume = dst.wait_event("RESUME", timeout=30, since=t0)
    if stop_source:
        src.stop(sync=False)
    dst.reconnect_exec()
    left = exec_timeout
    while True:
        try:
            dst._exec.request({"op": "ping"}, timeout=min(left, 5))
            break
        except GuestError:
            left = exec_timeout - (time.monotonic() - resume["t"])
            if left <= 0:
                raise GuestError(dst._with_tail("exec server of %s silent %d s after migration"
                                                % (dst.name, exec_timeout)))
            dst._check_alive("after migration")
            dst.reconnect_exec()
    t_exec = time.monotonic()
    return MigrationResult(src_name=src.name, dst_name=dst.name,
                           completed_s=t_completed - t0, resumed_s=resume["t"] - t0,
                           exec_back_s=t_exec - t0, resumed_at=resume["t"],
                           downtime_ms=info.get("downtime"), total_time_ms=info.get("total-time"))


class MigrationPair(object):
    """Ping-pong one guest between two channel socket paths ("hosts" A and B)."""

    def __init__(self, guest, channel_a, channel_b):
        self.guest = guest
        self.paths = (channel_a, channel_b)
        self.side = 0 if guest.channel_path in (None, channel_a) else 1
        self.results = []

    @property
    def channel_path(self):
        return self.guest.channel_path

    def hop(self, timeout=120):
        """Migrate to the other side; return the MigrationResult (``pair.guest`` is updated)."""
        other = 1 - self.side
        dst = make_destination(self.guest, self.paths[other])
        try:
            result = migrate(self.guest, dst, timeout=timeout)
        except BaseException:
            dst.stop(sync=False)
            raise
        self.guest, self.side = dst, other
        self.results.append(result)
        return result

    def stop(self):
        self.guest.stop()
