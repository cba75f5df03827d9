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
        out = []
        start = 0
        n = len(data)
        while start < n:
            nl = data.find(b"\n", start)
            end = n if nl < 0 else nl
            if self._discarding:
                if nl >= 0:
                    self._discarding = False
                start = end + 1
                continue
            room = self.max_line - 1 - len(self._buf)
            if end - start > room:
                self._buf = bytearray()
                out.append(ProtocolError("frame-too-large", "frame is over %d bytes" % self.max_line))
                if nl < 0:
                    self._discarding = True
                start = end + 1
                continue
            self._buf += data[start:end]
            if nl >= 0:
                out.append(bytes(self._buf))
                self._buf = bytearray()
            start = end + 1
        return out

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


# ---------------------------------------------------------------- host side

class HostSession(object):
    """Host side of one guest connection (sans-I/O).

    ``get_snapshot`` is a callable returning the current :class:`Snapshot` for this
    guest.  Call :meth:`connected` on every (re)connect and send what it returns;
    call :meth:`receive` with bytes from the guest and send what it returns;
    call :meth:`push` when the guest's snapshot changed.  ``errors`` counts frames
    refused since the connection began (the daemon rate-limits on it).
    """

    def __init__(self, get_snapshot, server_name="hostkvd"):
        self._get_snapshot = get_snapshot
        self.server_name = server_name
        self.version = None           # negotiated version, None until hello
        self.agent = None             # the agent's self-description from hello
        self.errors = 0
        self.requests = 0
        self._lines = LineBuffer(MAX_GUEST_FRAME_BYTES)

    def connected(self):
        """Reset per-connection state and return the snapshot to push unasked."""
        self._lines.reset()
        self.version = None
        self.agent = None
        self.errors = 0
        return b"\n" + self.push()   # the newline ends any half frame left in the guest's pipe

    def push(self):
        return encode(self._get_snapshot().to_frame(), MAX_SNAPSHOT_BYTES)

    def receive(self, data):
        out = []
        for line in self._lines.feed(data):
            if isinstance(line, ProtocolError):
                self.errors += 1
                out.append(encode(error_frame(line.code, str(line)), MAX_SNAPSHOT_BYTES))
                continue
            if not line.strip():
                continue
            out.extend(self._handle_line(line))
        return b"".join(out)

    def _handle_line(self, line):
        self.requests += 1
        try:
            frame = decode(line, MAX_GUEST_FRAME_BYTES)
            return self._handle(frame)
        except ProtocolError as err:
            self.errors += 1
            req_id = None
            try:
                req_id = _request_id(json.loads(line.decode("utf-8")))
            except Exception:
                pass
            return [encode(error_frame(err.code, str(err), req_id), MAX_SNAPSHOT_BYTES)]

    def _handle(self, frame):
        op = frame["op"]
        req_id = _request_id(frame)

        def reply(f):
            if req_id is not None:
                f["id"] = req_id
            return encode(f, MAX_SNAPSHOT_BYTES)

        if op == "ping":
            return [reply({"op": "pong"})]
        if op == "hello":
            self.version = negotiate(frame.get("versions"))
            agent = frame.get("agent")
            self.agent = agent[:64] if isinstance(agent, str) else None
            limits = {"key_bytes": MAX_KEY_BYTES, "value_bytes": MAX_VALUE_BYTES, "keys": MAX_KEYS,
                      "snapshot_bytes": MAX_SNAPSHOT_BYTES, "guest_frame_bytes": MAX_GUEST_FRAME_BYTES}
            return [reply({"op": "hello", "version": self.version, "server": self.server_name,
                           "limits": limits})]
        if op == "sync":
            token = frame.get("token")
            if not isinstance(token, str) or not _TOKEN_RE.match(token):
                raise ProtocolError("bad-token", "sync token must be 1-%d of [A-Za-z0-9_-]"
                                    % MAX_TOKEN_CHARS)
            # the leading newline ends any half frame still in the guest's pipe before our reply
            return [b"\n" + reply({"op": "sync", "token": token}), self.push()]
        if op == "get":
            key = validate_key(frame.get("key"))
            snap = self._get_snapshot()
            if key not in snap.values:
                raise ProtocolError("not-found", "no key %s" % key)
            return [reply({"op": "value", "key": key, "value": snap.values[key],
                           "host_id": snap.host_id, "generation": snap.generation})]
        raise ProtocolError("unknown-op", "unknown op %r (guests may send %s)"
                            % (op[:32], ", ".join(GUEST_OPS)))


# ---------------------------------------------------------------- guest side

class GuestEvent(object):
    """Base class of what :meth:`GuestSession.receive` reports."""


class SnapshotReceived(GuestEvent):
    def __init__(self, snapshot):
        self.snapshot = snapshot


class ReplyReceived(GuestEvent):
    """A reply (value, pong, hello, error) to one of our requests, or an unsolicited error."""

    def __init__(self, frame):
        self.frame = frame


class Resynced(GuestEvent):
    """The host answered our sync token: everything after this is frame-aligned."""


class InputDiscarded(GuestEvent):
    """A line was dropped (garbage, a partial frame, or an invalid snapshot); a resync was started."""

    def __init__(self, error):
        self.error = error


class GuestSession(object):
    """Guest side of the channel (sans-I/O).

    Call :meth:`connected` on every connect edge the guest sees and send
    :meth:`data_to_send`; feed bytes from the port to :meth:`receive`, which returns
    :class:`GuestEvent` objects.  While a sync is outstanding every line except the
    matching sync reply is discarded, so half a frame left in the pipe by a reconnect
    or migration can never be taken for data.  Any undecodable line starts a new sync.
    """

    def __init__(self, agent_name="hostkv-agent", versions=PROTOCOL_VERSIONS, token_factory=new_token):
        self.agent_name = agent_name
        self.versions = list(versions)
        self._token_factory = token_factory
        self._lines = LineBuffer(MAX_SNAPSHOT_BYTES)
        self._out = []
        self.sync_token = None
        self.version = None
        self._next_id = 1

    def connected(self):
        """A (re)connect edge: drop partial input, say hello and start a sync."""
        self._lines.reset()
        self.version = None
        self._out.append(b"\n")  # ends any half frame the host still holds from before
        self.start_sync()   # first: the hello reply then arrives after the sync reply
        self._queue({"op": "hello", "versions": self.versions, "agent": self.agent_name})

    def start_sync(self):
        self.sync_token = self._token_factory()
        self._queue({"op": "sync", "token": self.sync_token})

    def request(self, op, **fields):
        """Queue a request (``get``/``ping``); returns its id."""
        req_id = self._next_id
        self._next_id += 1
        fields.update(op=op, id=req_id)
        self._queue(fields)
        return req_id

    def _queue(self, frame):
        self._out.append(encode(frame, MAX_GUEST_FRAME_BYTES))

    def data_to_send(self):
        data = b"".join(self._out)
        self._out = []
        return data

    def receive(self, data):
        events = []
        for line in self._lines.feed(data):
            if isinstance(line, ProtocolError):
                events.append(self._discard(line))
                continue
            if not line.strip():
                continue
            try:
                frame = decode(line, MAX_SNAPSHOT_BYTES)
            except ProtocolError as err:
                events.append(self._discard(err))
                continue
            op = frame["op"]
            if self.sync_token is not None:
                if op == "sync" and frame.get("token") == self.sync_token:
                    self.sync_token = None
                    events.append(Resynced())
                continue
            if op == "snapshot":
                try:
                    events.append(SnapshotReceived(Snapshot.from_frame(frame)))
                except ProtocolError as err:
                    events.append(self._discard(err))
                continue
            if op == "hello" and isinstance(frame.get("version"), int):
                self.version = frame["version"]
            events.append(ReplyReceived(frame))
        return events

    def _discard(self, err):
        if self.sync_token is None:
            self.start_sync()
        return InputDiscarded(err)
