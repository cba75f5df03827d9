"""One guest channel: hostkvd's connection to the unix socket QEMU listens on for the guest's port.

Contract:
  * connects to ``path`` (QEMU's chardev socket server) and, on every (re)connect, pushes the
    guest's snapshot at once — a guest that migrated onto this host sees no disconnect edge, so the
    pushed snapshot is how it learns the new host's values;
  * while the socket does not exist, waits for it to appear (inotify on its directory: the
    reconnect is immediate and costs no wakeups); while it refuses, retries with exponential
    backoff (50 ms .. 2 s);
  * answers the guest's requests through :class:`hostkv.protocol.HostSession`;
  * **serving** (``serving``) means connected AND the guest has spoken on this connection (any
    complete frame: its hello/sync).  A connect alone proves nothing: when another client already
    holds QEMU's socket, our connect succeeds only into QEMU's listen backlog and nothing we send
    reaches the guest.  Until the guest speaks, status() says ``connected, guest silent for N s``;
  * a snapshot that breaks a protocol limit is never sent (HostSession.push sends the guest a
    ``snapshot-undeliverable`` error instead); ``undeliverable`` holds why until a snapshot goes out;
  * ``on_change`` (if set) is called after every change of ``serving``/``undeliverable``;
  * :meth:`push` sends the current snapshot again (values changed); pushes never queue up: only the
    newest snapshot is sent once the socket can take it;
  * a misbehaving guest is throttled by not reading (token buckets on bytes and requests), its
    replies are bounded by a high-water mark, and a connection with too many bad frames is closed
    and retried after a growing penalty (1 s .. 60 s).  Memory per channel is bounded by
    MAX_GUEST_FRAME_BYTES + HIGH_WATER + one snapshot, whatever the guest sends.
  * the reader yields the event loop after every chunk it reads (at most READ_CHUNK bytes), so one
    turn of the loop spent on a channel is bounded in work, whatever the guest sends; status()
    reports the largest turn seen (``turn_max``: bytes read, requests and errors handled, reply
    bytes made) and the most reply bytes ever queued (``queued_max``), counted, not timed.
"""

import asyncio
import collections
import logging
import time

from hostkv import protocol
from hostkv.hostkvd.ratelimit import TokenBucket
from hostkv.hostkvd.dirwatch import path_waiter
from hostkv.hostkvd.timeout import within

log = logging.getLogger("hostkvd.channel")

BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
SOCKET_WAIT_MAX = 60.0          # a missing socket is watched (inotify); re-checked at least this often
PENALTY_MIN = 1.0
PENALTY_MAX = 60.0
READ_CHUNK = 4096
HIGH_WATER = 64 * 1024          # bytes of replies queued before we stop reading the guest
MAX_ERRORS_PER_CONNECTION = 100
CLOSE_FLUSH_TIMEOUT = 1.0       # seconds a closing guest gets to take the error frames that explain it
REQUEST_RATE, REQUEST_BURST = 1000.0, 2000.0      # requests per second
BYTE_RATE, BYTE_BURST = 1024 * 1024.0, 4 * 1024 * 1024.0


class Channel(object):
    """hostkvd's side of one guest's ``org.hostkv.0`` port."""

    def __init__(self, key, path, snapshot_fn, label=None, server_name="hostkvd"):
        self.key = key
        self.path = path
        self.label = label or key
        self.session = protocol.HostSession(snapshot_fn, server_name)
        self.state = "new"
        self.connects = 0
        self.pushes = 0
        self.last_push = None
        self.refused = 0           # connections closed for misbehaviour
        self.vm_values = {}
        self.snapshot = None       # set by the daemon
        self._task = None
        self._connected = False
        self.connected_at = None    # wall clock of the current connection
        self.spoke_at = None        # wall clock of the guest's first frame on it (None: silent)
        self.undeliverable = None   # why the current snapshot cannot be delivered (None: it can)
        self.on_change = None
        self._out = collections.deque()
        self._out_bytes = 0
        self._push_wanted = False
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._penalty = 0.0
        self._bytes = TokenBucket(BYTE_RATE, BYTE_BURST)
        self._requests = TokenBucket(REQUEST_RATE, REQUEST_BURST)
        self.turn_max = {"bytes": 0, "requests": 0, "errors": 0, "reply_bytes": 0}
        self.queued_max = 0

    # ------------------------------------------------------------------ control

    def start(self):
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def close(self):
        self.state = "closed"
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except BaseException:
                pass
            self._task = None

    async def set_path(self, path):
        """Follow the socket to a new path (libvirt renames it on every start/restore/migration)."""
        if path == self.path and self._task is not None and not self._task.done():
            return
        self.path = path
        await self.close()
        self.start()

    def push(self):
        """Send the current snapshot now if connected (else it goes out on the next connect)."""
        if self._connected:
            self._push_wanted = True
            self._wake.set()

    @property
    def connected(self):
        return self._connected

    @property
    def serving(self):
        """Connected, the guest has spoken since the connect, and its snapshot can be delivered."""
        return self._connected and self.spoke_at is not None and self.undeliverable is None

    def describe(self, now=None):
        """One line for humans: what this channel's state means for the guest."""
        if self.state != "connected":
            return {"penalty": "closed for bad frames (penalty)", "waiting": "waiting for QEMU's socket",
                    "connecting": "connecting", "closed": "closed", "new": "starting"}.get(self.state, self.state)
        if self.undeliverable:
            return "undeliverable: %s" % self.undeliverable
        if self.spoke_at is None:
            return ("connected, guest silent for %.0f s (another client may hold the channel)"
                    % ((now or time.time()) - (self.connected_at or time.time())))
        return "serving"

    def _changed(self):
        if self.on_change is not None:
            self.on_change(self)

    def _pushed(self, err):
        """After every push: remember whether the snapshot went out (HostSession.push's result)."""
        why = str(err) if err is not None else None
        if why != self.undeliverable:
            self.undeliverable = why
            self._changed()

    def status(self):
        snap = self.snapshot
        return {
            "key": self.key, "label": self.label, "path": self.path, "state": self.state,
            "connected": self._connected, "serving": self.serving, "connected_at": self.connected_at,
            "guest_spoke_at": self.spoke_at, "undeliverable": self.undeliverable,
            "describe": self.describe(), "agent": self.session.agent,
            "protocol_version": self.session.version, "generation": snap.generation if snap else None,
            "connects": self.connects, "pushes": self.pushes, "last_push": self.last_push,
            "requests": self.session.requests, "errors": self.session.errors, "refused": self.refused,
            "turn_max": dict(self.turn_max), "queued_max": self.queued_max,
        }

    # ------------------------------------------------------------------ connection loop

    async def _run(self):
        backoff = BACKOFF_MIN
        while True:
            self.state = "connecting"
            try:
                reader, writer = await asyncio.open_unix_connection(self.path)
            except FileNotFoundError:
                # QEMU has not created the socket (yet): wake up when it appears, not on a timer
                self.state = "waiting"
                if await path_waiter().wait_for(self.path, SOCKET_WAIT_MAX, backoff):
                    backoff = BACKOFF_MIN    # event-driven: retry at once when it appears
                else:
                    backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            except (OSError, ValueError) as err:
                if self.state != "waiting":
                    log.debug("%s: %s not reachable (%s); retrying", self.label, self.path, err)
                self.state = "waiting"
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_MIN
            try:
                misbehaved = await self._serve(reader, writer)
            except asyncio.CancelledError:
                raise
            except Exception:   # a bug must not end this guest's channel for good, silently
                log.exception("%s: internal error while serving the channel; reconnecting", self.label)
                misbehaved = True
            if misbehaved:
                self.refused += 1
                self._penalty = min(max(self._penalty * 2, PENALTY_MIN), PENALTY_MAX)
                self.state = "penalty"
                log.warning("%s: closed the channel after %d bad frames; retrying in %.0f s",
                            self.label, self.session.errors, self._penalty)
                await asyncio.sleep(self._penalty)
            else:
                self._penalty = 0.0
                self.state = "waiting"
                await asyncio.sleep(BACKOFF_MIN)

    async def _serve(self, reader, writer):
        """Serve one connection; return True if it was closed for misbehaviour."""
        self._connected = True
        self.state = "connected"
        self.connects += 1
        self.connected_at = time.time()
        self.spoke_at = None
        self._out.clear()
        self._out_bytes = 0
        self._push_wanted = False
        self._idle.set()
        pushed = self.session.connect()
        writer.write(self.session.data_to_send())
        self._pushed(pushed)
        self.pushes += 1
        self.last_push = time.time()
        self._changed()
        log.info("%s: connected to %s, snapshot pushed (generation %s)", self.label, self.path,
                 self.snapshot.generation if self.snapshot else "?")
        writer_task = asyncio.ensure_future(self._write_loop(writer))
        try:
            while not writer_task.done():
                try:
                    data = await reader.read(READ_CHUNK)
                except (ConnectionError, OSError):
                    break
                if not data:
                    break
                before, errors_before = self.session.requests, self.session.errors
                events = self.session.receive(data)     # one event per guest frame handled
                if events and self.spoke_at is None:
                    self.spoke_at = time.time()
                    log.info("%s: the guest spoke: serving", self.label)
                    self._changed()
                out = self.session.data_to_send()
                if out:
                    self._queue(out)
                self._count_turn(len(data), self.session.requests - before,
                                 self.session.errors - errors_before, len(out))
                if self.session.errors >= MAX_ERRORS_PER_CONNECTION:
                    await self._flush(CLOSE_FLUSH_TIMEOUT)
                    return True
                delay = max(self._bytes.take(len(data)), self._requests.take(len(events)))
                # always yield: reader.read() returns buffered data without yielding, so a busy
                # guest would otherwise hold the loop for many chunks and stall the other guests
                await asyncio.sleep(delay if delay > 0 else 0)
                if self._out_bytes > HIGH_WATER:
                    await self._idle.wait()
            return False
        finally:
            self._connected = False
            self._changed()
            writer_task.cancel()
            try:
                await writer_task
            except BaseException:
                pass
            writer.close()
            log.info("%s: disconnected from %s", self.label, self.path)

    async def _flush(self, timeout):
        """Give the queued replies (bounded by HIGH_WATER) up to ``timeout`` seconds to go out."""
        await within(self._idle.wait(), timeout)

    def _count_turn(self, nbytes, requests, errors, reply_bytes):
        t = self.turn_max
        t["bytes"] = max(t["bytes"], nbytes)
        t["requests"] = max(t["requests"], requests)
        t["errors"] = max(t["errors"], errors)
        t["reply_bytes"] = max(t["reply_bytes"], reply_bytes)

    def _queue(self, data):
        self._out.append(data)
        self._out_bytes += len(data)
        self.queued_max = max(self.queued_max, self._out_bytes)
        self._idle.clear()
        self._wake.set()

    async def _write_loop(self, writer):
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._out or self._push_wanted:
                    if self._push_wanted:
                        self._push_wanted = False
                        self._pushed(self.session.push())
                        data = self.session.data_to_send()
                        self.pushes += 1
                        self.last_push = time.time()
                    else:
                        data = self._out.popleft()
                        self._out_bytes -= len(data)
                    writer.write(data)
                    await writer.drain()
                self._idle.set()
        except (ConnectionError, OSError):
            self._idle.set()
