"""The link to the host: the port, the protocol session and the outbox - and their one state.

States (:class:`LinkState`; :class:`Link` is their only owner, every change goes through
:data:`TRANSITIONS`, modelled on qemu.qmp's Runstate):

  NO_PORT       no port open: waiting for it (kernel uevents, else a timer; hotplug.py)
  DISCONNECTED  port open, nobody on the host side: asleep until the kernel reports an edge
  SYNCING       host connected, a sync outstanding: input is discarded until its reply
  IN_SYNC       frame-aligned: snapshots and replies are accepted

Inputs (:class:`LinkInput`) and what they do in each state are the table :data:`TRANSITIONS`;
a pair missing from it is a bug and raises :class:`StateError` (tests go through every pair).

The link never calls up: its methods return events, in order, for the loop to hand on:
:class:`LinkChanged` (old, new, reason, at), :class:`SnapshotArrived` (a valid snapshot with
the times its bytes were read and parsed), :class:`SnapshotUndeliverable` (the host says it
cannot deliver this guest's values) and the protocol's replies that carry one of our
request ids (``protocol.Value``, ``protocol.Error``, ``protocol.Pong``).  The sync token, its
retry and the requests' ids belong to the ``protocol.GuestSession`` the link owns.

Waiting: :meth:`Link.watched` says which fds the loop must wait on (the port edge-triggered for
its whole life when ``port.wakes``; the uevent socket while there is no port) and
:meth:`Link.next_deadline` when :meth:`Link.tick` is due (None: nothing timed - a host that is
away, or connected and quiet, costs no wakeups).  Edge-triggered means reading until the port
has nothing more; a read that ends on a frame boundary is handed on first and the rest read
right after (``next_deadline`` is then "now").  A port that does not wake (``wakes`` False)
is probed on a backoff of 50 ms doubling to 1 s while the host is away, as before.
"""

import enum
import select

from hostkv import protocol
from hostkv.agent import log
from hostkv.agent.hotplug import HotplugWatcher
from hostkv.agent.port import CONNECTED, PortGone

BACKOFF_MIN = 0.05
BACKOFF_MAX = 1.0
UNPLUG_SETTLE = 0.2         # after a port is lost, look again once after this (sysfs catches up)
MAX_OUTBOX = 1024 * 1024
READS_PER_WAKEUP = 32


class LinkState(enum.Enum):
    NO_PORT = "no-port"
    DISCONNECTED = "disconnected"
    SYNCING = "syncing"
    IN_SYNC = "in-sync"


class LinkInput(enum.Enum):
    PORT_FOUND = "port found"
    PORT_LOST = "port lost"
    HOST_CONNECTED = "host connected"
    HOST_DISCONNECTED = "host disconnected"
    SYNC_STARTED = "sync started"
    SYNC_ANSWERED = "sync answered"


_S, _I = LinkState, LinkInput
TRANSITIONS = {
    _S.NO_PORT: {_I.PORT_FOUND: _S.DISCONNECTED},
    _S.DISCONNECTED: {_I.PORT_LOST: _S.NO_PORT, _I.HOST_CONNECTED: _S.SYNCING,
                      _I.HOST_DISCONNECTED: _S.DISCONNECTED},
    _S.SYNCING: {_I.PORT_LOST: _S.NO_PORT, _I.HOST_DISCONNECTED: _S.DISCONNECTED,
                 _I.SYNC_STARTED: _S.SYNCING, _I.SYNC_ANSWERED: _S.IN_SYNC},
    _S.IN_SYNC: {_I.PORT_LOST: _S.NO_PORT, _I.HOST_DISCONNECTED: _S.DISCONNECTED,
                 _I.SYNC_STARTED: _S.SYNCING},
}
CONNECTED_STATES = (_S.SYNCING, _S.IN_SYNC)


class StateError(RuntimeError):
    """An input that cannot happen in the link's current state (a bug, never the host's doing)."""


class NotConnected(Exception):
    """A request needs the host, and it is not connected."""


def next_state(state, event):
    """The state after ``event`` (a LinkInput) in ``state``; StateError if it cannot happen."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise StateError("%s cannot happen while the link is %s" % (event.value, state.value))


class LinkEvent(object):
    __slots__ = ()


class LinkChanged(LinkEvent):
    """The link went from ``old`` to ``new`` (LinkState) at ``at`` (monotonic) because ``reason``."""

    __slots__ = ("old", "new", "reason", "at")

    def __init__(self, old, new, reason, at):
        self.old, self.new, self.reason, self.at = old, new, reason, at

    @property
    def connected(self):
        return self.new in CONNECTED_STATES

    def __repr__(self):
        return "LinkChanged(%s -> %s: %s)" % (self.old.value, self.new.value, self.reason)


class SnapshotArrived(LinkEvent):
    """A valid snapshot; ``read_at``/``parsed_at``: when its bytes were read and decoded (the
    last of several snapshots read at once: only the newest matters)."""

    __slots__ = ("snapshot", "read_at", "parsed_at")

    def __init__(self, snapshot, read_at, parsed_at):
        self.snapshot, self.read_at, self.parsed_at = snapshot, read_at, parsed_at

    def __repr__(self):
        return "SnapshotArrived(%r)" % (self.snapshot,)


class SnapshotUndeliverable(LinkEvent):
    """The host cannot deliver this guest's current values (an id-less ``snapshot-undeliverable``
    error, docs/PROTOCOL.md): what the guest has is not current until the next snapshot."""

    __slots__ = ("message", "at")

    def __init__(self, message, at):
        self.message, self.at = message, at

    def __repr__(self):
        return "SnapshotUndeliverable(%r)" % (self.message,)


class Link(object):
    """Owner of the port, the GuestSession, the outbox and the LinkState (see the module doc)."""

    def __init__(self, locator, session, clock, rescan_interval=1.0, hotplug=None):
        self.locator = locator
        self.session = session
        self.clock = clock
        self.rescan_interval = rescan_interval
        self.log = log.get_logger()
        if hotplug is None:
            hotplug = HotplugWatcher(None if getattr(locator, "device", None) else b"virtio-ports")
        self.hotplug = hotplug
        self.state = LinkState.NO_PORT
        self.since = clock()
        self.port = None
        self.host_version = None
        self.host_server = None
        self.stats = {"connects": 0, "disconnects": 0, "discarded": 0, "syncs": 0}
        self._events = []
        self._outbox = bytearray()
        self._next_scan = None       # NO_PORT: look again then (None: a uevent will tell)
        self._next_probe = None      # DISCONNECTED on a port that does not wake: probe then
        self._backoff = BACKOFF_MIN
        self._more = False           # input left unread after READS_PER_WAKEUP reads
        self._held = False           # output held back while a snapshot is published (_feed)
        self._last_reason = None
        self._discarded = 0
        self._discard_logged_at = None

    # ------------------------------------------------------------ what the loop asks

    @property
    def connected(self):
        return self.state in CONNECTED_STATES

    def watched(self):
        """{fd: (poll events, edge_triggered, owner)} to wait on now (``owner``: the object
        whose fd it is, so a closed fd whose number comes back is registered anew)."""
        port = self.port
        if port is not None:
            if port.wakes:
                return {port.fileno(): (select.POLLIN | select.POLLOUT, True, port)}
            if self.connected:
                return {port.fileno(): (select.POLLIN | (select.POLLOUT if self._outbox else 0),
                                        False, port)}
            return {}
        if self.hotplug.sock is not None:
            return {self.hotplug.fileno(): (select.POLLIN, False, self.hotplug.sock)}
        return {}

    def next_deadline(self):
        """When :meth:`tick` is due (monotonic), or None."""
        if self._more or self._held:
            return self.clock()
        if self.state is LinkState.NO_PORT:
            return self._next_scan
        if self.state is LinkState.DISCONNECTED:
            return self._next_probe
        return self.session.next_deadline()

    def status(self):
        return {"link": self.state.value, "since": self.since,
                "port": self.port.path if self.port is not None else None,
                "connected": self.connected, "in_sync": self.state is LinkState.IN_SYNC,
                "host_version": self.host_version, "stats": dict(self.stats)}

    # ------------------------------------------------------------ what the loop tells

    def start(self, now):
        """Look for the port for the first time."""
        self._look(now)
        return self._take()

    def handle(self, fd, revents, now):
        """``fd`` (one of :meth:`watched`) is ready with ``revents``."""
        if self.port is not None and fd == self.port.fileno():
            self._on_port(revents, now)
        elif self.hotplug.sock is not None and fd == self.hotplug.fileno():
            if self.hotplug.read():
                self._look(now)
        return self._take()

    def tick(self, now):
        """Run whatever is due (see :meth:`next_deadline`)."""
        self._held = False                      # the publication that held output back is done
        if self._more and self.connected:
            self._read(now, 0)
        if self.state is LinkState.NO_PORT and self._next_scan is not None and now >= self._next_scan:
            self._look(now)
        elif self.state is LinkState.DISCONNECTED and self._next_probe is not None \
                and now >= self._next_probe:
            self._probe(now)
        elif self.connected:
            for event in self.session.tick(now):
                if isinstance(event, protocol.SyncTimedOut):
                    level = self.log.warning if event.attempts in (2, 11) or event.attempts % 100 == 1 \
                        else self.log.debug
                    level("no sync reply from the host for %.1f s; starting a new sync (attempt %d)",
                          self.session.sync_timeout, event.attempts)
            self._follow_session("periodic re-sync", now)
            if not self._held:                  # else that read brought a snapshot: after its publication
                self._flush_session()
        return self._take()

    def get(self, key):
        """Ask the host for ``key`` (sent once in sync); the request id.  NotConnected if away."""
        if not self.connected:
            raise NotConnected("the host is not connected")
        req_id = self.session.get(key)
        self._flush_session()
        return req_id

    def cancel(self, req_id):
        self.session.cancel(req_id)

    def resync(self, now):
        """Start a new sync (SIGHUP), if connected and in sync."""
        if self.state is LinkState.IN_SYNC:
            self.session.resync(now)
            self._follow_session("re-sync requested", now)
            self._flush_session()
        return self._take()

    def close(self, now):
        """The agent stops: close the port (the host sees the guest side close)."""
        if self.port is not None:
            self._lose_port("the agent is stopping", now, look_again=False)
        self.hotplug.close()
        return self._take()

    # ------------------------------------------------------------ states

    def _transition(self, event, reason, now):
        new = next_state(self.state, event)
        if new is not self.state:
            self._events.append(LinkChanged(self.state, new, reason, now))
            self.state, self.since = new, now

    def _follow_session(self, reason, now):
        """The session started a sync on its own (bad input, periodic re-sync): follow it."""
        if self.state is LinkState.IN_SYNC and not self.session.in_sync:
            self._transition(LinkInput.SYNC_STARTED, reason, now)

    def _take(self):
        events, self._events = self._events, []
        return events

    # ------------------------------------------------------------ the port

    def _look(self, now):
        if self.state is not LinkState.NO_PORT:
            return
        uevents = self.hotplug.open()          # first: a port added after this is announced
        port = self.locator.locate()
        if port is None:
            reason = self.locator.last_reason
            if reason != self._last_reason:
                self.log.warning("waiting for the port: %s", reason)
                self._last_reason = reason
            # no uevent announces that a busy port became free: keep a timer for that case
            timer = not uevents or getattr(self.locator, "last_open_failed", False)
            self._next_scan = now + self.rescan_interval if timer else None
            return
        self.hotplug.close()
        self._last_reason = self._next_scan = None
        self.port = port
        self._transition(LinkInput.PORT_FOUND, "opened %s" % port.path, now)
        if port.wakes:
            self.log.info("opened port %s", port.path)
        else:
            self.log.info("opened port %s (not a virtio port: probing for the host every %.2f-%.0f s "
                          "while it is away)", port.path, BACKOFF_MIN, BACKOFF_MAX)
        self._backoff = BACKOFF_MIN
        self._probe(now)

    def _probe(self, now):
        try:
            state = self.port.probe()
        except PortGone as err:
            self._lose_port(err, now)
            return
        if state == CONNECTED:
            self._connect(now)
        elif self.port.wakes:
            self._next_probe = None
        else:
            self._next_probe = now + self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def _connect(self, now):
        self._next_probe = None
        self._backoff = BACKOFF_MIN
        self._outbox = bytearray()
        self.stats["connects"] += 1
        self.session.connect(now)
        self._transition(LinkInput.HOST_CONNECTED, "host connected", now)
        self.log.info("host connected on %s", self.port.path)
        self._flush_session()
        if self.port is not None and self.connected:
            self._read(now, 0)                  # the host pushes at once: its bytes may be here

    def _disconnect(self, reason, now):
        self.stats["disconnects"] += 1
        self._outbox = bytearray()
        self._more = False
        self.session.disconnect()
        self._transition(LinkInput.HOST_DISCONNECTED, reason, now)
        self.log.warning("host disconnected (%s)", reason)
        if self.port is not None and not self.port.wakes:
            self._backoff = BACKOFF_MIN
            self._next_probe = now + BACKOFF_MIN

    def _lose_port(self, err, now, look_again=True):
        if look_again:
            self.log.warning("port lost: %s; looking for it again", err)
        if self.connected:
            self._disconnect("port gone" if look_again else str(err), now)
        self.port.close()
        self.port = None
        self._next_probe = None
        self._more = False
        self._transition(LinkInput.PORT_LOST, str(err), now)
        if look_again:
            self.hotplug.open()
            self._next_scan = now + min(self.rescan_interval, UNPLUG_SETTLE)

    def _on_port(self, revents, now):
        if revents & select.POLLNVAL:
            self._lose_port(PortGone("poll reported POLLNVAL"), now)
            return
        if self.state is LinkState.DISCONNECTED:
            self._probe(now)                    # an edge (or the first report): host back?
            return
        if self.port.wakes or revents & (select.POLLIN | select.POLLHUP | select.POLLERR):
            self._read(now, revents)
        if self.connected and self.port is not None and not self._held:
            self._flush()

    def _read(self, now, revents):
        """Read until the port has nothing more (edge-triggered: all of it, or READS_PER_WAKEUP
        chunks and come back at once); feed the session once with everything read."""
        self._more = False
        chunks = []
        read_at = None
        gone = hung_up = None
        for _ in range(READS_PER_WAKEUP):
            try:
                data = self.port.read()
            except PortGone as err:
                gone = err
                break
            if data is None:
                if revents & (select.POLLHUP | select.POLLERR):
                    hung_up = True
                break
            if not data:
                hung_up = False
                break
            if read_at is None:
                read_at = self.clock()
            chunks.append(data)
            if data.endswith(b"\n"):
                # complete frames: hand them on now and read on right after (the loop comes
                # back at once): the read that finds nothing more (EAGAIN, an exception, cold
                # code after a migration) then costs the readers nothing
                self._more = True
                break
        else:
            self._more = True
        if chunks:
            self._feed(chunks[0] if len(chunks) == 1 else b"".join(chunks), read_at)
            if self.port is None:               # lost while answering
                return
        if gone is not None:
            self._lose_port(gone, now)
        elif hung_up is False:
            self._disconnect("end of input", now)
        elif hung_up and self.connected:
            try:
                if self.port.probe() != CONNECTED:
                    self._disconnect("hang-up", now)
            except PortGone as err:
                self._lose_port(err, now)

    def _feed(self, data, read_at):
        events = self.session.receive(data, read_at)
        parsed_at = self.clock()
        latest = None
        for event in events:
            if isinstance(event, protocol.SnapshotReceived):
                latest = event.snapshot
            elif isinstance(event, protocol.Resynced):
                self.stats["syncs"] += 1
            elif isinstance(event, protocol.InputDiscarded):
                self._note_discard(event, parsed_at)
            elif isinstance(event, protocol.Hello):
                self.host_version, self.host_server = event.version, event.server
                self.log.info("host speaks protocol version %s (server %r)", event.version, event.server)
            elif isinstance(event, protocol.Reply):
                if event.id is not None:
                    self._events.append(event)
                elif isinstance(event, protocol.Error) and event.code == "snapshot-undeliverable":
                    latest = None        # a snapshot before it in this batch is not current
                    self._events.append(SnapshotUndeliverable(event.message, parsed_at))
                elif isinstance(event, protocol.Error):
                    self.log.warning("host reported an error: %s: %s", event.code, event.message)
        # the session's sync state after all of it (a batch may hold a sync reply and garbage)
        if self.state is LinkState.SYNCING and self.session.in_sync:
            self._transition(LinkInput.SYNC_ANSWERED, "sync answered", parsed_at)
        self._follow_session("discarded input from the host", parsed_at)
        if latest is not None:
            self._events.append(SnapshotArrived(latest, read_at, parsed_at))
            # what the session answers (e.g. the hello + sync after a migration landed) waits in
            # it for the loop's next pass, after the publication (tick): encoding and a port write
            # are cold code too
            self._held = True
        else:
            self._flush_session()

    def _note_discard(self, event, now):
        self.stats["discarded"] += 1
        self._discarded += 1
        if self._discard_logged_at is None or now - self._discard_logged_at >= 10.0:
            self.log.warning("discarded input from the host (%s; %d line(s) since the last report); "
                             "re-syncing%s", str(event.error)[:120], self._discarded,
                             " in %.1f s" % event.hold if event.hold else "")
            self._discard_logged_at = now
            self._discarded = 0

    # ------------------------------------------------------------ output

    def _flush_session(self):
        data = self.session.data_to_send()
        if data and self.connected:
            if len(self._outbox) + len(data) > MAX_OUTBOX:
                self.log.error("the host is not reading; dropping %d queued bytes", len(self._outbox))
                self._outbox = bytearray()
            self._outbox += data
        self._flush()

    def _flush(self):
        self._held = False
        while self._outbox and self.connected and self.port is not None:
            try:
                n = self.port.write(bytes(self._outbox[:65536]))
            except PortGone as err:
                self._lose_port(err, self.clock())
                return
            if not n:
                return                          # the kernel wakes us when there is room
            del self._outbox[:n]
