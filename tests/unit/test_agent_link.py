"""The link's state machine (hostkv.agent.link): the transition table over every state x input,
and the real Link driven through each transition with a scripted port (no threads, no sockets:
every call returns its events, so each step is checked exactly)."""

import select

import pytest

from hostkv import protocol
from hostkv.agent.link import (TRANSITIONS, Link, LinkChanged, LinkInput, LinkState, NotConnected,
                               SnapshotArrived, StateError, next_state)
from hostkv.agent.port import CONNECTED, DISCONNECTED, PortGone

S, I = LinkState, LinkInput

# What each input does in each state, written out independently of link.py; None: cannot happen.
EXPECTED = {
    (S.NO_PORT, I.PORT_FOUND): S.DISCONNECTED,
    (S.NO_PORT, I.PORT_LOST): None,
    (S.NO_PORT, I.HOST_CONNECTED): None,
    (S.NO_PORT, I.HOST_DISCONNECTED): None,
    (S.NO_PORT, I.SYNC_STARTED): None,
    (S.NO_PORT, I.SYNC_ANSWERED): None,
    (S.DISCONNECTED, I.PORT_FOUND): None,
    (S.DISCONNECTED, I.PORT_LOST): S.NO_PORT,
    (S.DISCONNECTED, I.HOST_CONNECTED): S.SYNCING,
    (S.DISCONNECTED, I.HOST_DISCONNECTED): S.DISCONNECTED,
    (S.DISCONNECTED, I.SYNC_STARTED): None,
    (S.DISCONNECTED, I.SYNC_ANSWERED): None,
    (S.SYNCING, I.PORT_FOUND): None,
    (S.SYNCING, I.PORT_LOST): S.NO_PORT,
    (S.SYNCING, I.HOST_CONNECTED): None,
    (S.SYNCING, I.HOST_DISCONNECTED): S.DISCONNECTED,
    (S.SYNCING, I.SYNC_STARTED): S.SYNCING,
    (S.SYNCING, I.SYNC_ANSWERED): S.IN_SYNC,
    (S.IN_SYNC, I.PORT_FOUND): None,
    (S.IN_SYNC, I.PORT_LOST): S.NO_PORT,
    (S.IN_SYNC, I.HOST_CONNECTED): None,
    (S.IN_SYNC, I.HOST_DISCONNECTED): S.DISCONNECTED,
    (S.IN_SYNC, I.SYNC_STARTED): S.SYNCING,
    (S.IN_SYNC, I.SYNC_ANSWERED): None,
}


def test_expected_covers_every_state_and_input():
    assert set(EXPECTED) == set((s, i) for s in LinkState for i in LinkInput)


@pytest.mark.parametrize("state, event", sorted(EXPECTED, key=lambda p: (p[0].value, p[1].value)))
def test_transition_table(state, event):
    want = EXPECTED[(state, event)]
    if want is None:
        with pytest.raises(StateError):
            next_state(state, event)
        assert event not in TRANSITIONS[state]
    else:
        assert next_state(state, event) is want


# ---------------------------------------------------------------- a scripted port

class ScriptPort(object):
    """A port whose state the test sets: ``host`` connected or not, ``inbox`` of chunks, ``gone``."""

    def __init__(self, wakes=True):
        self.wakes = wakes
        self.path = "/dev/vport-test"
        self.host = False
        self.gone = False
        self.inbox = []
        self.written = bytearray()
        self.closed = False
        self.probes = 0

    def fileno(self):
        return 99

    def probe(self):
        self.probes += 1
        if self.gone:
            raise PortGone("unplugged")
        if not self.host:
            del self.inbox[:]
        return CONNECTED if self.host else DISCONNECTED

    def read(self, size=65536):
        if self.gone:
            raise PortGone("unplugged")
        if self.inbox:
            return self.inbox.pop(0)
        return None if self.host else b""

    def write(self, data):
        if self.gone:
            raise PortGone("unplugged")
        self.written += data
        return len(data)

    def close(self):
        self.closed = True

    def sent(self):
        out, self.written = bytes(self.written), bytearray()
        return [protocol.decode(line, protocol.MAX_GUEST_FRAME_BYTES) for line in out.split(b"\n") if line]


class ScriptLocator(object):
    def __init__(self, port):
        self.port = port
        self.present = False
        self.last_reason = "not plugged in yet"

    def locate(self):
        return self.port if self.present else None


class ScriptHotplug(object):
    """uevents available: fd 98 while open."""

    def __init__(self):
        self.sock = None

    def open(self):
        self.sock = object()
        return True

    def fileno(self):
        return 98

    def read(self):
        return True

    def close(self):
        self.sock = None


SNAP = protocol.Snapshot("hv1", 3, {"host.hostname": "hv1"})


class Rig(object):
    def __init__(self, wakes=True, resync_interval=None):
        self.now = 100.0
        self.port = ScriptPort(wakes)
        self.locator = ScriptLocator(self.port)
        self.hotplug = ScriptHotplug()
        tokens = ("tok%d" % i for i in range(1000))
        self.session = protocol.GuestSession(token_factory=tokens.__next__, sync_timeout=2.0,
                                             resync_interval=resync_interval, clock=lambda: self.now)
        self.link = Link(self.locator, self.session, lambda: self.now, rescan_interval=1.0,
                         hotplug=self.hotplug)

    def port_event(self, revents=select.POLLIN):
        """The port reports ``revents``; then what the loop does at once (the link reads on
        after handing on complete frames: its deadline is then "now")."""
        events = self.link.handle(99, revents, self.now)
        while self.link.next_deadline() is not None and self.link.next_deadline() <= self.now:
            events += self.link.tick(self.now)
        return events

    # the six inputs, each through what really causes it
    def plug(self):
        self.locator.present = True
        return self.link.handle(98, select.POLLIN, self.now)          # a uevent

    def unplug(self):
        self.port.gone = True
        return self.port_event(select.POLLHUP)

    def host_connects(self):
        self.port.host = True
        return self.port_event(select.POLLOUT)

    def host_leaves(self):
        self.port.host = False
        return self.port_event(select.POLLIN | select.POLLHUP)

    def answer_sync(self, snapshot=SNAP):
        token = self.session.sync_token
        self.port.inbox.append(b'\n{"op":"sync","token":"%s"}\n' % token.encode()
                               + protocol.encode(snapshot.to_frame(), protocol.MAX_SNAPSHOT_BYTES))
        return self.port_event()

    def garbage(self):
        self.port.inbox.append(b"not json\n")
        return self.port_event()

    def sync_times_out(self):
        self.now = self.session.next_deadline()
        return self.link.tick(self.now)

    def drive_to(self, state):
        assert self.link.start(self.now) == [] and self.link.state is S.NO_PORT
        if state is S.NO_PORT:
            return
        self.plug()
        if state is S.DISCONNECTED:
            return
        self.host_connects()
        if state is S.SYNCING:
            return
        self.answer_sync()
        assert self.link.state is S.IN_SYNC


def changes(events):
    return [(e.old, e.new) for e in events if isinstance(e, LinkChanged)]


# every possible transition, through the Link: (from, input) -> what the test does
CAUSES = {
    (S.NO_PORT, I.PORT_FOUND): Rig.plug,
    (S.DISCONNECTED, I.PORT_LOST): Rig.unplug,
    (S.DISCONNECTED, I.HOST_CONNECTED): Rig.host_connects,
    (S.DISCONNECTED, I.HOST_DISCONNECTED): Rig.host_leaves,
    (S.SYNCING, I.PORT_LOST): Rig.unplug,
    (S.SYNCING, I.HOST_DISCONNECTED): Rig.host_leaves,
    (S.SYNCING, I.SYNC_STARTED): Rig.sync_times_out,
    (S.SYNCING, I.SYNC_ANSWERED): Rig.answer_sync,
    (S.IN_SYNC, I.PORT_LOST): Rig.unplug,
    (S.IN_SYNC, I.HOST_DISCONNECTED): Rig.host_leaves,
    (S.IN_SYNC, I.SYNC_STARTED): Rig.garbage,
}


def test_every_possible_transition_has_a_cause_here():
    assert set(CAUSES) == set(pair for pair, new in EXPECTED.items() if new is not None)


@pytest.mark.parametrize("state, event", sorted(CAUSES, key=lambda p: (p[0].value, p[1].value)))
def test_each_transition_through_the_link(state, event):
    rig = Rig()
    rig.drive_to(state)
    events = CAUSES[(state, event)](rig)
    want = EXPECTED[(state, event)]
    assert rig.link.state is want
    got = changes(events)
    if want is state:
        assert got == []                      # a self-loop is no change
    elif event is I.PORT_LOST and state in (S.SYNCING, S.IN_SYNC):
        assert got == [(state, S.DISCONNECTED), (S.DISCONNECTED, S.NO_PORT)]   # via disconnected
    else:
        assert got == [(state, want)]
    assert all(e.at == rig.now for e in events if isinstance(e, LinkChanged))


@pytest.mark.parametrize("state", list(LinkState))
def test_calls_that_do_not_apply_in_a_state_change_nothing(state):
    rig = Rig()
    rig.drive_to(state)
    if state is not S.IN_SYNC:
        assert rig.link.resync(rig.now) == [] and rig.link.state is state
    if state in (S.NO_PORT, S.DISCONNECTED):
        with pytest.raises(NotConnected):
            rig.link.get("host.hostname")
        assert rig.link.tick(rig.now) == [] and rig.link.state is state


# ---------------------------------------------------------------- behaviour in each state

def test_the_whole_life_of_a_link():
    rig = Rig()
    link = rig.link
    rig.drive_to(S.NO_PORT)
    assert link.watched() == {98: (select.POLLIN, False, rig.hotplug.sock)}    # the uevent socket
    assert link.next_deadline() is None              # a uevent will tell: no timer
    assert changes(rig.plug()) == [(S.NO_PORT, S.DISCONNECTED)]
    assert rig.hotplug.sock is None                  # uevents are not read while a port is open
    assert link.watched() == {99: (select.POLLIN | select.POLLOUT, True, rig.port)}
    assert link.next_deadline() is None              # the host is away: asleep, no timeout
    events = rig.host_connects()
    assert changes(events) == [(S.DISCONNECTED, S.SYNCING)]
    assert [f["op"] for f in rig.port.sent()] == ["sync", "hello"]
    assert link.next_deadline() == rig.now + 2.0     # the session's sync retry
    events = rig.answer_sync()
    assert changes(events) == [(S.SYNCING, S.IN_SYNC)]
    arrived = [e for e in events if isinstance(e, SnapshotArrived)]
    assert [e.snapshot for e in arrived] == [SNAP] and arrived[0].read_at == rig.now
    assert link.next_deadline() is None              # in sync and quiet: nothing timed
    # a live get goes out at once, its reply comes back up as a typed event
    req = link.get("host.hostname")
    assert rig.port.sent() == [{"op": "get", "id": req, "key": "host.hostname"}]
    rig.port.inbox.append(b'{"op":"value","id":%d,"key":"host.hostname","value":"hv1","host_id":"hv1",'
                          b'"generation":3}\n' % req)
    assert rig.port_event() == [protocol.Value(req, "host.hostname", "hv1", "hv1", 3)]
    # garbage: a new sync; its answer: in sync again
    assert changes(rig.garbage()) == [(S.IN_SYNC, S.SYNCING)]
    assert [f["op"] for f in rig.port.sent()] == ["sync"]
    assert changes(rig.answer_sync()) == [(S.SYNCING, S.IN_SYNC)]
    assert link.stats["discarded"] == 1 and link.stats["syncs"] == 2
    # the host leaves and comes back
    assert changes(rig.host_leaves()) == [(S.IN_SYNC, S.DISCONNECTED)]
    assert link.next_deadline() is None
    assert changes(rig.host_connects()) == [(S.DISCONNECTED, S.SYNCING)]
    # unplugged: via DISCONNECTED to NO_PORT, uevents watched again, one look after it settles
    assert changes(rig.unplug()) == [(S.SYNCING, S.DISCONNECTED), (S.DISCONNECTED, S.NO_PORT)]
    assert rig.port.closed and rig.hotplug.sock is not None
    assert link.next_deadline() == rig.now + 0.2
    assert link.stats == {"connects": 2, "disconnects": 2, "discarded": 1, "syncs": 2}


def test_snapshots_read_at_once_are_published_once_with_the_last():
    rig = Rig()
    rig.drive_to(S.IN_SYNC)
    frames = b"".join(protocol.encode(protocol.Snapshot("hv1", g, {"host.n": str(g)}).to_frame(),
                                      protocol.MAX_SNAPSHOT_BYTES) for g in range(50))
    rig.port.inbox.extend([frames[:1000], frames[1000:]])
    arrived = [e for e in rig.port_event() if isinstance(e, SnapshotArrived)]
    assert [e.snapshot.generation for e in arrived] == [49]


def test_a_connect_with_the_snapshot_already_there_is_handled_in_one_wakeup():
    """The host pushes at once on connect; the connect edge and the bytes may come as one event."""
    rig = Rig()
    rig.drive_to(S.DISCONNECTED)
    rig.port.host = True
    rig.port.inbox.append(b"\n" + protocol.encode(SNAP.to_frame(), protocol.MAX_SNAPSHOT_BYTES))
    events = rig.port_event(select.POLLOUT)
    assert changes(events) == [(S.DISCONNECTED, S.SYNCING)]     # (discarded: no sync reply yet)
    assert rig.port.inbox == []


def test_a_port_that_does_not_wake_is_probed_with_backoff_while_the_host_is_away():
    rig = Rig(wakes=False)
    rig.drive_to(S.DISCONNECTED)
    assert rig.link.watched() == {}                  # a level-triggered HUP would spin: not polled
    deadlines = []
    for _ in range(7):
        rig.now = rig.link.next_deadline()
        deadlines.append(round(rig.now - 100.0, 2))
        rig.link.tick(rig.now)
    assert deadlines == [0.05, 0.15, 0.35, 0.75, 1.55, 2.55, 3.55]
    rig.port.host = True
    rig.now = rig.link.next_deadline()
    assert changes(rig.link.tick(rig.now)) == [(S.DISCONNECTED, S.SYNCING)]
    # connected: polled level-triggered, for output only while something waits to be written
    assert rig.link.watched() == {99: (select.POLLIN, False, rig.port)}
    assert [f["op"] for f in rig.port.sent()] == ["sync", "hello"]
    assert changes(rig.host_leaves()) == [(S.SYNCING, S.DISCONNECTED)]
    assert rig.link.next_deadline() == rig.now + 0.05          # the backoff starts again


def test_without_uevents_a_missing_port_is_looked_for_on_a_timer():
    rig = Rig()
    rig.hotplug.open = lambda: False
    rig.link.start(rig.now)
    assert rig.link.next_deadline() == rig.now + 1.0
    rig.locator.present = True
    rig.now += 1.0
    assert changes(rig.link.tick(rig.now)) == [(S.NO_PORT, S.DISCONNECTED)]


def test_periodic_resync_and_sighup_resync():
    rig = Rig(resync_interval=300)
    rig.drive_to(S.IN_SYNC)
    assert rig.link.next_deadline() == rig.now + 300
    rig.now += 300
    assert changes(rig.link.tick(rig.now)) == [(S.IN_SYNC, S.SYNCING)]
    rig.answer_sync()
    assert changes(rig.link.resync(rig.now)) == [(S.IN_SYNC, S.SYNCING)]
    assert [f["op"] for f in rig.port.sent()][-1] == "sync"


def test_close_lets_the_host_see_the_guest_go():
    rig = Rig()
    rig.drive_to(S.IN_SYNC)
    events = rig.link.close(rig.now)
    assert changes(events) == [(S.IN_SYNC, S.DISCONNECTED), (S.DISCONNECTED, S.NO_PORT)]
    assert rig.port.closed and rig.hotplug.sock is None


def test_complete_frames_are_handed_on_before_the_read_that_finds_nothing_more():
    """Edge-triggered: read until the port is empty - but a chunk ending on a frame boundary is
    handed on first; the read that finds nothing (EAGAIN) comes right after, from tick()."""
    rig = Rig()
    rig.drive_to(S.IN_SYNC)
    reads = []
    real_read = rig.port.read
    rig.port.read = lambda size=65536: reads.append(1) or real_read(size)
    rig.port.inbox.append(protocol.encode(SNAP.to_frame(), protocol.MAX_SNAPSHOT_BYTES))
    events = rig.link.handle(99, select.POLLIN, rig.now)
    assert [type(e) for e in events] == [SnapshotArrived] and len(reads) == 1
    assert rig.link.next_deadline() == rig.now                 # come back at once
    assert rig.link.tick(rig.now) == [] and len(reads) == 2    # ... and find nothing more
    assert rig.link.next_deadline() is None
    # a chunk that ends inside a frame: read on at once
    frame = protocol.encode(SNAP.to_frame(), protocol.MAX_SNAPSHOT_BYTES)
    rig.port.inbox.extend([frame[:10], frame[10:]])
    events = rig.link.handle(99, select.POLLIN, rig.now)
    assert [type(e) for e in events] == [SnapshotArrived] and len(reads) == 4


def test_the_answer_to_a_moved_snapshot_waits_until_after_its_publication():
    """A snapshot from another host (a live migration landed, no connect edge): the session
    starts a sync and a hello with the new host - written on the loop's next pass (tick), after
    the loop has published the snapshot, not on the way to it."""
    rig = Rig()
    rig.drive_to(S.IN_SYNC)
    rig.port.sent()
    moved = protocol.Snapshot("hv2", 1, {"host.hostname": "hv2"})
    rig.port.inbox.append(protocol.encode(moved.to_frame(), protocol.MAX_SNAPSHOT_BYTES))
    events = rig.link.handle(99, select.POLLIN, rig.now)
    assert [e.snapshot.host_id for e in events if isinstance(e, SnapshotArrived)] == ["hv2"]
    assert changes(events) == [(S.IN_SYNC, S.SYNCING)]
    assert rig.port.sent() == []                               # nothing written yet
    assert rig.link.next_deadline() == rig.now                 # the loop comes back at once ...
    rig.link.tick(rig.now)
    assert [f["op"] for f in rig.port.sent()] == ["sync", "hello"]   # ... and writes it then
    assert rig.link.next_deadline() == rig.now + 2.0           # the sync's own deadline
