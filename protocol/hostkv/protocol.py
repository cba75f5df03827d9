"""hostkv wire protocol: newline-delimited JSON over one virtio-serial port.

This module is the single implementation of the contract in docs/PROTOCOL.md and is
shared by hostkvd (host) and hostkv-agent (guest).  It is sans-I/O and uses only the
Python 3.6+ standard library: the callers own the sockets and file descriptors and feed
bytes in; the sessions hand back decoded events and the bytes to send.

Roles:
  * the host is authoritative; it pushes ``snapshot`` frames unasked on every connect
    and on every change, and answers requests;
  * the guest may only send requests: ``hello``, ``sync``, ``get``, ``ping``.  There is
    no request that changes host data.

Every limit below is enforced by both sides; anything over a limit is refused with a
:class:`ProtocolError` naming the limit, never truncated.
"""

import binascii
import json
import os
import re

from hostkv.common import entries, paths

PROTOCOL_VERSIONS = (1,)          # versions this implementation speaks, oldest first
DEFAULT_PORT_NAME = paths.PORT_NAME

# The key/value rule is hostkv.common.entries' (shared with hostkvd's config, hostkvctl, koan and
# the Cobbler validator); these names stay here for the protocol's users.
MAX_KEY_BYTES = entries.MAX_KEY_BYTES
MAX_VALUE_BYTES = entries.MAX_VALUE_BYTES
MAX_KEYS = entries.MAX_KEYS
MAX_SNAPSHOT_BYTES = 256 * 1024   # one encoded host -> guest frame, newline included
MAX_GUEST_FRAME_BYTES = 4096      # one encoded guest -> host frame, newline included
MAX_HOST_ID_BYTES = 128
MAX_TOKEN_CHARS = 64

SCOPES = entries.SCOPES
_TOKEN_RE = re.compile(r"\A[A-Za-z0-9_-]{1,%d}\Z" % MAX_TOKEN_CHARS)

GUEST_OPS = ("hello", "sync", "get", "ping")


class ProtocolError(entries.EntryError):
    """A frame or value that breaks the contract.

    ``code`` is the machine-readable error code sent in ``error`` frames
    (e.g. ``frame-too-large``, ``bad-json``, ``bad-key``); ``str(err)`` is for humans.
    An :class:`hostkv.common.entries.EntryError` (a ValueError), so one ``except`` catches both.
    """


# ---------------------------------------------------------------- validation

def _entry_rule(check, *args):
    """Run a hostkv.common.entries check; its refusal becomes a ProtocolError with the same code."""
    try:
        return check(*args)
    except entries.EntryError as err:
        raise ProtocolError(err.code, str(err))


def validate_key(key):
    """Return ``key`` if it is a valid hostkv key, else raise ProtocolError('bad-key')."""
    return _entry_rule(entries.validate_key, key)


def validate_value(key, value):
    """Return ``value`` if it is a valid value (entries' rule: XML 1.0 text, <= 4096 UTF-8 bytes)."""
    return _entry_rule(entries.validate_value, key, value)


def validate_values(values, scope=None):
    """Validate a key -> value mapping; optionally require every key in ``scope``.

    Returns a new plain dict.  Raises ProtocolError on the first offending entry.
    """
    return _entry_rule(entries.validate_entries, values, scope)


def validate_host_id(host_id):
    """A host id: 1-128 bytes of UTF-8 with no control characters (it ends up in logs and env)."""
    try:
        size = len(host_id.encode("utf-8")) if isinstance(host_id, str) else 0
    except UnicodeEncodeError:      # a lone surrogate from a JSON "\udc80" escape
        size = 0
    if not size or size > MAX_HOST_ID_BYTES or any(c < " " or c == "\x7f" for c in host_id):
        raise ProtocolError("bad-host-id", "host_id must be 1-%d bytes of printable UTF-8"
                            % MAX_HOST_ID_BYTES)
    return host_id


def new_token():
    """A random sync token (32 hex characters)."""
    return binascii.hexlify(os.urandom(16)).decode("ascii")


def negotiate(offered):
    """Pick the highest version both sides speak from a peer's ``versions`` list."""
    if not isinstance(offered, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                for v in offered):
        raise ProtocolError("bad-frame", "versions must be a list of integers")
    common = set(offered) & set(PROTOCOL_VERSIONS)
    if not common:
        raise ProtocolError("no-common-version", "peer speaks %s, we speak %s"
                            % (sorted(offered)[:8], list(PROTOCOL_VERSIONS)))
    return max(common)


# ---------------------------------------------------------------- framing

def encode(frame, limit):
    """Encode one frame as a UTF-8 JSON line; refuse (ProtocolError) if over ``limit`` bytes."""
    data = json.dumps(frame, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    data = data.encode("utf-8") + b"\n"
    if len(data) > limit:
        raise ProtocolError("frame-too-large", "frame is %d bytes, the limit is %d" % (len(data), limit))
    return data


def decode(line, limit):
    """Decode one line (without or with its newline) into a frame dict with a string ``op``."""
    if len(line) > limit:
        raise ProtocolError("frame-too-large", "frame is over %d bytes" % limit)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("bad-utf8", "frame is not valid UTF-8")
    try:
        frame = json.loads(text)
    except ValueError as err:  # json.JSONDecodeError is a ValueError; also RecursionError-free
        raise ProtocolError("bad-json", "frame is not JSON: %s" % str(err)[:80])
    except RecursionError:
        raise ProtocolError("bad-json", "frame nests too deeply")
    if not isinstance(frame, dict):
        raise ProtocolError("bad-frame", "frame must be a JSON object")
    if not isinstance(frame.get("op"), str):
        raise ProtocolError("bad-frame", "frame has no string 'op'")
    return frame


class LineBuffer(object):
    """Split a byte stream into lines of at most ``max_line`` bytes (newline included).

    ``feed(data)`` returns a list whose items are complete lines (bytes, newline
    stripped) or :class:`ProtocolError` instances for lines that were too long; the
    rest of an over-long line is discarded up to its newline, so memory stays bounded
    by ``max_line`` whatever the peer sends.
    """

    def __init__(self, max_line):
        self.max_line = max_line
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data):
        # one split in C instead of a find() per line: after a live migration every new code
        # path runs cold under TCG, so the path from bytes to a frame is kept short
        parts = data.split(b"\n")
        tail = parts.pop()              # after the last newline: the start of the next line
        out = []
        limit = self.max_line - 1       # bytes a line may have before its newline
        for part in parts:
            if self._discarding:        # the newline that ends a line already refused
                self._discarding = False
                continue
            if self._buf:
                if len(self._buf) + len(part) > limit:
                    self._buf = bytearray()
                    out.append(self._too_large())
                    continue
                part = bytes(self._buf + part)
                self._buf = bytearray()
            out.append(part if len(part) <= limit else self._too_large())
        if tail and not self._discarding:
            if len(self._buf) + len(tail) > limit:
                self._buf = bytearray()
                out.append(self._too_large())
                self._discarding = True
            else:
                self._buf += tail
        return out

    def _too_large(self):
        return ProtocolError("frame-too-large", "frame is over %d bytes" % self.max_line)

    def reset(self):
        """Drop any partial line (after a reconnect)."""
        self._buf = bytearray()
        self._discarding = False

    @property
    def pending(self):
        return len(self._buf)


# ---------------------------------------------------------------- frames

def snapshot_frame(host_id, generation, values):
    return {"op": "snapshot", "v": 1, "host_id": host_id, "generation": generation,
            "values": values}


def error_frame(code, message, req_id=None):
    frame = {"op": "error", "code": code, "message": message}
    if req_id is not None:
        frame["id"] = req_id
    return frame


def _request_id(frame):
    """The request's ``id`` if it is safe to echo (int or short string), else None."""
    req_id = frame.get("id")
    if isinstance(req_id, bool):
        return None
    if isinstance(req_id, int) and -2 ** 53 < req_id < 2 ** 53:
        return req_id
    if isinstance(req_id, str) and len(req_id) <= MAX_TOKEN_CHARS:
        try:
            req_id.encode("utf-8")      # a lone surrogate cannot be echoed
        except UnicodeEncodeError:
            return None
        return req_id
    return None


class Snapshot(object):
    """What the host tells one guest: host_id, generation and the values (host.* and vm.*)."""

    __slots__ = ("host_id", "generation", "values")
    _fields = ("host_id", "generation", "values")

    def __init__(self, host_id, generation, values):
        self.host_id = host_id
        self.generation = generation
        self.values = values

    def to_frame(self):
        return snapshot_frame(self.host_id, self.generation, self.values)

    @classmethod
    def from_frame(cls, frame):
        """Validate a ``snapshot`` frame from the host (guest side)."""
        host_id = validate_host_id(frame.get("host_id"))
        generation = frame.get("generation")
        if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
            raise ProtocolError("bad-frame", "snapshot generation must be a non-negative integer")
        return cls(host_id, generation, validate_values(frame.get("values")))

    def __eq__(self, other):
        return (isinstance(other, Snapshot) and self.host_id == other.host_id
                and self.generation == other.generation and self.values == other.values)

    def __repr__(self):
        return "Snapshot(%r, %r, %d keys)" % (self.host_id, self.generation, len(self.values))



# ---------------------------------------------------------------- error codes

# Every ``ProtocolError.code`` either side uses, with what it means.  docs/PROTOCOL.md lists the
# same codes (a unit test compares the two and greps the code for codes not registered here).
#   sent: may appear in an ``error`` frame from the host (an answer to one bad guest frame);
#   data: a refusal of data (a snapshot the guest discards before re-syncing, a value hostkvd,
#         hostkvctl or koan refuses to accept); never sent in a frame.
ERROR_CODES = {
    "frame-too-large": ("sent", "a frame is over its limit (256 KiB host -> guest, 4 KiB guest -> host)"),
    "bad-utf8": ("sent", "a frame is not valid UTF-8"),
    "bad-json": ("sent", "a frame is not JSON, or nests too deeply"),
    "bad-frame": ("sent", "not an object with a string op, or a field of the wrong type"),
    "unknown-op": ("sent", "the guest sent an op other than hello, sync, get, ping"),
    "no-common-version": ("sent", "hello: the two sides share no protocol version"),
    "bad-token": ("sent", "sync: the token is not 1-64 characters of [A-Za-z0-9_-]"),
    "bad-key": ("sent", "a key breaks the key rules (get, or a key in a snapshot)"),
    "not-found": ("sent", "get: this guest has no such key"),
    "snapshot-undeliverable": ("sent", "no id: the host cannot deliver this guest's current values "
                                       "(they break a limit); the guest marks what it has stale"),
    "bad-value": ("data", "a value is not a string of valid UTF-8"),
    "value-too-large": ("data", "a value is over 4096 bytes of UTF-8"),
    "bad-values": ("data", "values is not a JSON object"),
    "too-many-keys": ("data", "more than 256 keys"),
    "bad-scope": ("data", "a key outside the scope allowed where it was given (host.* or vm.*)"),
    "bad-host-id": ("data", "host_id is not 1-128 bytes of printable UTF-8"),
}


# ---------------------------------------------------------------- events
#
# Both sessions have the same shape: ``receive(data) -> [events]`` with the bytes that came in,
# ``data_to_send() -> bytes`` with what to write out next, and explicit calls for everything the
# owner decides (``connect()``, the host's ``push()``, the guest's ``get()``/``ping()``/``resync()``).
# The guest session also owns the sync token and its retry: ``tick(now)`` runs its timers and
# ``next_deadline()`` says when it next needs to (None: never; it never needs polling).

class Event(object):
    """Base of everything the sessions report (typed: no raw frames cross this boundary).
    ``_fields`` names every attribute (for repr and ==)."""

    __slots__ = ()
    _fields = ()

    def __repr__(self):
        fields = ", ".join("%s=%r" % (name, getattr(self, name)) for name in self._fields)
        return "%s(%s)" % (type(self).__name__, fields)

    def __eq__(self, other):
        return type(self) is type(other) and all(
            getattr(self, n) == getattr(other, n) for n in self._fields)

    def __ne__(self, other):
        return not self == other

    __hash__ = None


class HostEvent(Event):
    """What :meth:`HostSession.receive` reports: one event per guest frame (request) handled."""

    __slots__ = ()


class GuestHello(HostEvent):
    """The guest said hello: the negotiated ``version`` and its ``agent`` string (<= 64 chars)."""

    __slots__ = ("version", "agent")
    _fields = ("version", "agent")

    def __init__(self, version, agent):
        self.version = version
        self.agent = agent


class RequestAnswered(HostEvent):
    """A ``ping``, ``sync`` or ``get`` was answered (``id`` as echoed, or None)."""

    __slots__ = ("op", "id")
    _fields = ("op", "id")

    def __init__(self, op, req_id):
        self.op = op
        self.id = req_id


class RequestRefused(HostEvent):
    """A guest frame was refused with an ``error`` frame; ``error`` is the ProtocolError."""

    __slots__ = ("error", "id")
    _fields = ("error", "id")

    def __init__(self, error, req_id=None):
        self.error = error
        self.id = req_id


class GuestEvent(Event):
    """What :meth:`GuestSession.receive` and :meth:`GuestSession.tick` report."""

    __slots__ = ()


class SnapshotReceived(GuestEvent):
    """A valid snapshot arrived while in sync (pushed unasked, or after a sync)."""

    __slots__ = ("snapshot",)
    _fields = ("snapshot",)

    def __init__(self, snapshot):
        self.snapshot = snapshot


class Resynced(GuestEvent):
    """The host answered our sync token: everything after this is frame-aligned."""

    __slots__ = ()


class InputDiscarded(GuestEvent):
    """A line was dropped (garbage, a partial frame, an invalid snapshot or reply) and a new
    sync started; ``hold`` > 0: that sync is held back that many seconds (the host keeps
    answering syncs with bad data: 0.1 s doubling to 5 s while it goes on)."""

    __slots__ = ("error", "hold")
    _fields = ("error", "hold")

    def __init__(self, error, hold=0.0):
        self.error = error
        self.hold = hold


class SyncTimedOut(GuestEvent):
    """The sync was unanswered for ``sync_timeout``: a new one with a new token was sent
    (``attempts``: syncs sent since the channel was last in sync)."""

    __slots__ = ("attempts",)
    _fields = ("attempts",)

    def __init__(self, attempts):
        self.attempts = attempts


class Reply(GuestEvent):
    """Base of the host's replies; ``id`` is our request's id (None: unsolicited)."""

    __slots__ = ("id",)
    _fields = ("id",)


class Value(Reply):
    """The answer to :meth:`GuestSession.get`: the key's value as the host has it now."""

    __slots__ = ("key", "value", "host_id", "generation")
    _fields = ("id", "key", "value", "host_id", "generation")

    def __init__(self, req_id, key, value, host_id, generation):
        self.id = req_id
        self.key = key
        self.value = value
        self.host_id = host_id
        self.generation = generation


class Pong(Reply):
    __slots__ = ()
    _fields = ("id",)

    def __init__(self, req_id):
        self.id = req_id


class Hello(Reply):
    """The host's answer to our hello: the negotiated ``version``, its ``server`` string
    (<= 64 characters) and the ``limits`` it announced (a dict of ints, {} if none)."""

    __slots__ = ("version", "server", "limits")
    _fields = ("id", "version", "server", "limits")

    def __init__(self, req_id, version, server, limits):
        self.id = req_id
        self.version = version
        self.server = server
        self.limits = limits


class Error(Reply):
    """An ``error`` frame: ``code`` (<= 40 characters, see ERROR_CODES; a newer host may send
    others) and ``message`` (<= 200 characters).  ``id`` None: about no request of ours."""

    __slots__ = ("code", "message")
    _fields = ("id", "code", "message")

    def __init__(self, req_id, code, message):
        self.id = req_id
        self.code = code
        self.message = message


class UnknownReply(Reply):
    """A frame with an op this version does not know (a newer host): ignored but reported."""

    __slots__ = ("op",)
    _fields = ("id", "op")

    def __init__(self, req_id, op):
        self.id = req_id
        self.op = op


# ---------------------------------------------------------------- host side

class HostSession(object):
    """Host side of one guest connection (sans-I/O).

    ``get_snapshot`` is a callable returning the current :class:`Snapshot` for this guest.
    Call :meth:`connect` on every (re)connect, :meth:`receive` with the bytes from the guest,
    :meth:`push` when the guest's snapshot changed, and send :meth:`data_to_send` after each.
    ``errors`` counts frames refused since the connection began (the daemon closes the
    connection of a guest that sends too many), ``requests`` the frames handled.
    """

    def __init__(self, get_snapshot, server_name="hostkvd"):
        self._get_snapshot = get_snapshot
        self.server_name = server_name
        self.version = None           # negotiated version, None until hello
        self.agent = None             # the agent's self-description from hello
        self.errors = 0
        self.requests = 0
        self._lines = LineBuffer(MAX_GUEST_FRAME_BYTES)
        self._out = []

    def connect(self):
        """A (re)connect: reset per-connection state and queue the snapshot, pushed unasked.

        Returns what :meth:`push` returns (None, or why the snapshot could not be delivered)."""
        self._lines.reset()
        self._out = [b"\n"]           # the newline ends any half frame left in the guest's pipe
        self.version = None
        self.agent = None
        self.errors = 0
        return self.push()

    def push(self):
        """Queue the current snapshot (the guest's values changed).

        Returns None when the snapshot was queued.  A snapshot that breaks a limit (too many keys,
        a bad value, over the frame limit) is never sent: the guest gets a ``snapshot-undeliverable``
        error frame without ``id`` instead (so it marks what it has stale, never presenting it as
        current) and push returns that :class:`ProtocolError` for the caller to log and report."""
        snap = self._get_snapshot()
        try:
            validate_host_id(snap.host_id)
            validate_values(snap.values)
            data = encode(snap.to_frame(), MAX_SNAPSHOT_BYTES)
        except ProtocolError as err:
            refusal = ProtocolError("snapshot-undeliverable",
                                    "this guest's values cannot be delivered: %s" % err)
            self._out.append(encode(error_frame(refusal.code, str(refusal)[:200]),
                                    MAX_SNAPSHOT_BYTES))
            return err
        self._out.append(data)
        return None

    def data_to_send(self):
        data = b"".join(self._out)
        self._out = []
        return data

    def receive(self, data):
        """Handle the guest's bytes; returns one :class:`HostEvent` per complete frame."""
        events = []
        for line in self._lines.feed(data):
            if isinstance(line, ProtocolError):
                events.append(self._refuse(line, None))
            elif line.strip():
                events.append(self._handle_line(line))
        return events

    def _refuse(self, err, req_id):
        self.errors += 1
        self._out.append(encode(error_frame(err.code, str(err), req_id), MAX_SNAPSHOT_BYTES))
        return RequestRefused(err, req_id)

    def _handle_line(self, line):
        self.requests += 1
        try:
            frame = decode(line, MAX_GUEST_FRAME_BYTES)
            return self._handle(frame)
        except ProtocolError as err:
            req_id = None
            try:
                req_id = _request_id(json.loads(line.decode("utf-8")))
            except Exception:
                pass
            return self._refuse(err, req_id)

    def _reply(self, frame, req_id, prefix=b""):
        if req_id is not None:
            frame["id"] = req_id
        self._out.append(prefix + encode(frame, MAX_SNAPSHOT_BYTES))

    def _handle(self, frame):
        op = frame["op"]
        req_id = _request_id(frame)
        if op == "ping":
            self._reply({"op": "pong"}, req_id)
            return RequestAnswered(op, req_id)
        if op == "hello":
            self.version = negotiate(frame.get("versions"))
            agent = frame.get("agent")
            self.agent = agent[:64] if isinstance(agent, str) else None
            limits = {"key_bytes": MAX_KEY_BYTES, "value_bytes": MAX_VALUE_BYTES, "keys": MAX_KEYS,
                      "snapshot_bytes": MAX_SNAPSHOT_BYTES, "guest_frame_bytes": MAX_GUEST_FRAME_BYTES}
            self._reply({"op": "hello", "version": self.version, "server": self.server_name,
                         "limits": limits}, req_id)
            return GuestHello(self.version, self.agent)
        if op == "sync":
            token = frame.get("token")
            if not isinstance(token, str) or not _TOKEN_RE.match(token):
                raise ProtocolError("bad-token", "sync token must be 1-%d of [A-Za-z0-9_-]"
                                    % MAX_TOKEN_CHARS)
            # the leading newline ends any half frame still in the guest's pipe before our reply
            self._reply({"op": "sync", "token": token}, req_id, prefix=b"\n")
            self.push()
            return RequestAnswered(op, req_id)
        if op == "get":
            key = validate_key(frame.get("key"))
            snap = self._get_snapshot()
            if key not in snap.values:
                raise ProtocolError("not-found", "no key %s" % key)
            self._reply({"op": "value", "key": key, "value": snap.values[key],
                         "host_id": snap.host_id, "generation": snap.generation}, req_id)
            return RequestAnswered(op, req_id)
        raise ProtocolError("unknown-op", "unknown op %r (guests may send %s)"
                            % (op[:32], ", ".join(GUEST_OPS)))


# ---------------------------------------------------------------- guest side

SYNC_TIMEOUT = 2.0                # a sync unanswered this long is sent again with a new token
SYNC_HOLD_MIN, SYNC_HOLD_MAX = 0.1, 5.0


import time as _time  # noqa: E402 - kept in this section (the top of the module is shared)


class GuestSession(object):
    """Guest side of the channel (sans-I/O); the one owner of the sync token.

    Call :meth:`connect` on every connect edge the guest sees and :meth:`disconnect` when the
    host goes away; feed bytes from the port to :meth:`receive`; call :meth:`tick` when
    :meth:`next_deadline` is due; after each, write :meth:`data_to_send` to the port.  Every
    method that needs the time takes ``now`` (default: ``clock()``, time.monotonic).

    Resync: while a sync is outstanding every line except the matching sync reply is
    discarded, so half a frame left in the pipe by a reconnect or migration can never be taken
    for data.  Any undecodable line or invalid snapshot/reply starts a new sync; a sync
    unanswered for ``sync_timeout`` is sent again with a new token; a host that answers every
    sync with bad data gets the next one held back (0.1 s doubling to 5 s) until good data
    arrives.  ``resync_interval`` (seconds, None/0 = never): a periodic sync while in sync.

    Requests (:meth:`get`, :meth:`ping`) get an id at once and are sent while in sync; the
    ones in flight when a new sync starts are sent again after it (their replies, if any,
    were discarded with everything before the sync reply), so each gets exactly one reply
    event unless :meth:`cancel` or :meth:`disconnect` drops it first.
    """

    def __init__(self, agent_name="hostkv-agent", versions=PROTOCOL_VERSIONS, token_factory=new_token,
                 sync_timeout=SYNC_TIMEOUT, resync_interval=None, clock=None):
        self.agent_name = agent_name
        self.versions = list(versions)
        self.sync_timeout = sync_timeout
        self.resync_interval = resync_interval or None
        self._token_factory = token_factory
        self._clock = clock or _time.monotonic
        self._lines = LineBuffer(MAX_SNAPSHOT_BYTES)
        self._out = []
        self._connected = False
        self._token = None            # the outstanding sync's token (None: in sync, or not connected)
        self._sync_sent_at = None     # when the outstanding sync was sent (None: held back)
        self._hold_until = None       # the outstanding sync is sent at this time
        self._attempts = 0            # syncs sent since last in sync
        self._discard_streak = 0      # syncs in a row ended by bad data (reset by a valid snapshot)
        self._synced_at = None
        self._next_id = 1
        self._requests = {}           # id -> encoded frame, until its reply (or cancel/disconnect)
        self._unsent = []             # ids to send once in sync
        self.version = None           # from the host's hello reply
        self.server = None
        self._host_id = None          # host_id of the last snapshot taken (a change: see receive)

    # ------------------------------------------------------------ state

    @property
    def connected(self):
        return self._connected

    @property
    def in_sync(self):
        """Connected and frame-aligned: snapshots and replies are being accepted."""
        return self._connected and self._token is None

    @property
    def sync_token(self):
        """The outstanding sync's token, or None."""
        return self._token

    @property
    def pending(self):
        """Ids of the requests waiting for their reply."""
        return sorted(self._requests)

    def next_deadline(self):
        """When :meth:`tick` must next run (monotonic seconds), or None: nothing is timed."""
        if not self._connected:
            return None
        if self._token is not None:
            if self._sync_sent_at is None:
                return self._hold_until
            return self._sync_sent_at + self.sync_timeout
        if self.resync_interval and self._synced_at is not None:
            return self._synced_at + self.resync_interval
        return None

    # ------------------------------------------------------------ the owner's calls

    def connect(self, now=None):
        """A (re)connect edge: drop partial input, say hello and start a sync."""
        now = self._now(now)
        self._lines.reset()
        self._out = [b"\n"]           # ends any half frame the host still holds from before
        self._connected = True
        self.version = self.server = None
        self._attempts = 0
        self._discard_streak = 0
        self._start_sync(now)         # first: the hello reply then arrives after the sync reply
        self._queue({"op": "hello", "versions": self.versions, "agent": self.agent_name})

    def disconnect(self):
        """The host went away: drop input, output and the requests in flight; returns their ids."""
        dropped = sorted(self._requests)
        self._lines.reset()
        self._out = []
        self._connected = False
        self._token = self._sync_sent_at = self._hold_until = None
        self._requests = {}
        self._unsent = []
        return dropped

    def resync(self, now=None):
        """Start a new sync now (e.g. SIGHUP), unless one is already outstanding."""
        if self._connected and self._token is None:
            self._attempts = 0
            self._start_sync(self._now(now))

    def get(self, key):
        """Ask the host for ``key``'s current value; returns the request id (reply: Value/Error)."""
        return self.request("get", key=key)

    def ping(self):
        return self.request("ping")

    def request(self, op, **fields):
        """Queue a request; returns its id.  ProtocolError if the frame would be too large."""
        req_id = self._next_id
        fields.update(op=op, id=req_id)
        data = encode(fields, MAX_GUEST_FRAME_BYTES)
        self._next_id += 1
        self._requests[req_id] = data
        if self.in_sync:
            self._out.append(data)
        else:
            self._unsent.append(req_id)
        return req_id

    def cancel(self, req_id):
        """Forget a request (e.g. its caller timed out); a late reply to it is ignored."""
        self._requests.pop(req_id, None)

    def tick(self, now=None):
        """Run the timers that are due; returns the events (SyncTimedOut)."""
        now = self._now(now)
        if not self._connected:
            return []
        if self._token is not None:
            if self._sync_sent_at is None:
                if now >= self._hold_until:
                    self._send_sync(now)
                return []
            if now >= self._sync_sent_at + self.sync_timeout:
                self._start_sync(now)
                return [SyncTimedOut(self._attempts)]
            return []
        if self.resync_interval and self._synced_at is not None \
                and now >= self._synced_at + self.resync_interval:
            self._attempts = 0
            self._start_sync(now)
        return []

    def data_to_send(self):
        # frames the session queued itself (hello, sync) are encoded here, not when queued: a
        # sync started by a snapshot (a migration landed) then costs nothing before it is published
        data = b"".join([encode(x, MAX_GUEST_FRAME_BYTES) if isinstance(x, dict) else x for x in self._out])
        self._out = []
        return data

    # ------------------------------------------------------------ input

    def receive(self, data, now=None):
        """Handle bytes from the host; returns :class:`GuestEvent` objects in order."""
        events = []
        if not self._connected:
            return events
        for line in self._lines.feed(data):
            if isinstance(line, ProtocolError):
                events.append(self._discard(line, now))
                continue
            if not line.strip():
                continue
            try:
                frame = decode(line, MAX_SNAPSHOT_BYTES)
            except ProtocolError as err:
                events.append(self._discard(err, now))
                continue
            op = frame["op"]
            if self._token is not None:
                if op == "sync" and frame.get("token") == self._token:
                    self._synced(now)
                    events.append(Resynced())
                continue
            try:
                if op == "snapshot":
                    event = SnapshotReceived(Snapshot.from_frame(frame))
                    self._discard_streak = 0
                else:
                    event = self._reply_event(op, frame)
            except ProtocolError as err:
                events.append(self._discard(err, now))
                continue
            if event is not None:
                events.append(event)
            if op == "snapshot":
                moved = self._host_id is not None and event.snapshot.host_id != self._host_id
                self._host_id = event.snapshot.host_id
                if moved:
                    # another host pushed without a connect edge we saw (a live migration landed):
                    # sync and hello with it, so it knows this guest listens (its "serving" needs
                    # the guest to speak) and any half frame of the move is behind us
                    self._start_sync(self._now(now))
                    self._queue({"op": "hello", "versions": self.versions, "agent": self.agent_name})
        return events

    def _reply_event(self, op, frame):
        """The typed event for a reply frame, None for one to ignore; ProtocolError if invalid."""
        req_id = frame.get("id")
        if req_id is not None and (not isinstance(req_id, int) or isinstance(req_id, bool)):
            req_id = None               # not one of ours (we only send integer ids)
        if op == "hello":
            version = frame.get("version")
            if not isinstance(version, int) or isinstance(version, bool):
                raise ProtocolError("bad-frame", "hello reply without an integer version")
            server = frame.get("server")
            limits = frame.get("limits")
            limits = dict((k, v) for k, v in limits.items() if isinstance(k, str) and isinstance(v, int)) \
                if isinstance(limits, dict) else {}
            self.version = version
            self.server = server[:64] if isinstance(server, str) else None
            return Hello(self._answered(req_id), version, self.server, limits)
        if op == "error":
            code, message = frame.get("code"), frame.get("message")
            return Error(self._answered(req_id), code[:40] if isinstance(code, str) else "error",
                         message[:200] if isinstance(message, str) else "")
        if op == "sync":
            return None                 # the reply to an older sync (a retried one)
        if req_id is not None and req_id not in self._requests:
            return None                 # a late reply to a request cancelled or already answered
        if op == "value":
            key = validate_key(frame.get("key"))
            value = validate_value(key, frame.get("value"))
            host_id = validate_host_id(frame.get("host_id"))
            generation = frame.get("generation")
            if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
                raise ProtocolError("bad-frame", "value generation must be a non-negative integer")
            return Value(self._answered(req_id), key, value, host_id, generation)
        if op == "pong":
            return Pong(self._answered(req_id))
        return UnknownReply(self._answered(req_id), op[:32])

    def _answered(self, req_id):
        if req_id is None or self._requests.pop(req_id, None) is None:
            return None
        return req_id

    # ------------------------------------------------------------ sync

    def _now(self, now):
        return self._clock() if now is None else now

    def _start_sync(self, now, hold=0.0):
        """A new token; everything until its reply is discarded.  Requests in flight are
        sent again after it."""
        self._token = self._token_factory()
        self._unsent = sorted(self._requests)
        if hold > 0:
            self._sync_sent_at = None
            self._hold_until = now + hold
        else:
            self._send_sync(now)

    def _send_sync(self, now):
        self._sync_sent_at, self._hold_until = now, None
        self._attempts += 1
        self._queue({"op": "sync", "token": self._token})

    def _synced(self, now):
        self._token = self._sync_sent_at = self._hold_until = None
        self._attempts = 0
        self._synced_at = self._now(now)
        for req_id in self._unsent:
            data = self._requests.get(req_id)
            if data is not None:
                self._out.append(data)
        self._unsent = []

    def _discard(self, err, now):
        hold = 0.0
        if self._token is None:
            # a host that answers every sync with bad data must not make us spin
            self._discard_streak += 1
            if self._discard_streak > 1:
                hold = min(SYNC_HOLD_MIN * 2 ** (self._discard_streak - 2), SYNC_HOLD_MAX)
            self._start_sync(self._now(now), hold)
        return InputDiscarded(err, hold)

    def _queue(self, frame):
        self._out.append(frame)      # one of the session's own small frames: see data_to_send
