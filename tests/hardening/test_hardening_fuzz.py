"""Fuzzing both frame parsers with hypothesis (issue 6, item 2).

Targets: the host's ``HostSession.receive`` (with ``LineBuffer`` and ``decode`` under it) and the
guest's ``GuestSession.receive``.  Inputs: arbitrary bytes split arbitrarily, structured
near-valid frames (right ops, wrong types, lone surrogates, huge ids, mutated encodings), deep
nesting, and a differential model of ``LineBuffer``.  Every outcome must be a reply/event or a
ProtocolError-class refusal: no exception escapes, nothing hangs (per-example deadline), and the
buffers stay bounded (``pending`` < the frame limit).  The totals are printed at the end and the
last test asserts that at least 100,000 inputs were tried.

Crashes found here are kept as plain regression tests at the bottom of this file.
"""

import json
import os
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hostkv import protocol as P

SCALE = float(os.environ.get("HOSTKV_FUZZ_SCALE", "1"))   # <1 for a quick look
COUNT = {"inputs": 0, "examples": 0, "bytes": 0}
RAN = set()
FUZZ = dict(deadline=2000, database=None, print_blob=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                   HealthCheck.filter_too_much])
HOST_REPLY_OPS = {"pong", "hello", "sync", "value", "error", "snapshot"}

# Characters that matter to a JSON/UTF-8 parser: quotes, escapes, controls, line separators,
# non-ASCII, and lone surrogates (valid in JSON "\\ud800" escapes, not encodable as UTF-8).
ODD_CHARS = ["a", "Z", "0", " ", "\"", "\\", "/", "\n", "\r", "\t", "\x00", "\x7f", "\u00e9", "\u2028",
             "\u4e2d", "\U0001f600", "\ud800", "\udc80", "\ufeff", "{", "}", "[", "]", ":", ","]
ANY_TEXT = st.text(st.sampled_from(ODD_CHARS), max_size=40)
KEY_TEXT = st.text(st.sampled_from(list("abcXYZ09._-")), min_size=1, max_size=130)
JSON_SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(-2 ** 70, 2 ** 70)
                | st.floats(allow_nan=True, allow_infinity=True) | ANY_TEXT)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda c: st.lists(c, max_size=3)
                           | st.dictionaries(ANY_TEXT, c, max_size=3), max_leaves=6)
KEYS = (st.sampled_from(["host.hostname", "host.rack", "vm.role", "vm.x", "host.", "vm", ""])
        | st.tuples(st.sampled_from(["host.", "vm.", "guest.", ""]), KEY_TEXT).map("".join)
        | ANY_TEXT | JSON_SCALARS)
IDS = st.integers() | st.integers(-2 ** 60, 2 ** 60) | ANY_TEXT | st.text(max_size=70) | JSON_VALUES
TOKENS = st.text(st.sampled_from(list("aZ09_-")), max_size=70) | ANY_TEXT | JSON_SCALARS
VERSIONS = st.lists(st.integers(-3, 5), max_size=4) | JSON_VALUES

GUEST_FRAMES = st.fixed_dictionaries(
    {"op": st.sampled_from(P.GUEST_OPS + ("snapshot", "pong", "", "HELLO")) | ANY_TEXT | JSON_SCALARS},
    optional={"id": IDS, "key": KEYS, "token": TOKENS, "versions": VERSIONS, "agent": ANY_TEXT | JSON_VALUES,
              "extra": JSON_VALUES})

VALUE_TEXT = ANY_TEXT | st.just("x" * 4097) | st.just("\u00fc" * 2049)
SNAPSHOT_FRAMES = st.fixed_dictionaries(
    {"op": st.just("snapshot") | st.sampled_from(["sync", "pong", "value", "error", "hello"]),
     "host_id": st.just("hostA") | ANY_TEXT | st.just("h" * 129) | JSON_SCALARS,
     "generation": st.integers(-1, 2 ** 64) | JSON_SCALARS,
     "values": st.dictionaries(KEYS.filter(lambda k: isinstance(k, str)), VALUE_TEXT | JSON_SCALARS,
                               max_size=5) | JSON_VALUES},
    optional={"v": JSON_SCALARS, "token": TOKENS, "id": IDS, "code": ANY_TEXT, "message": ANY_TEXT})
MUTANTS = 30          # cheap seeded mutants of every drawn frame (hypothesis draws the structure)


def _dumps(frame, ascii_only):
    text = json.dumps(frame, ensure_ascii=ascii_only)
    return text.encode("utf-8", "surrogatepass")     # a raw lone surrogate is invalid UTF-8: fine


@st.composite
def mutated(draw, frames):
    """One encoded frame, sometimes damaged (truncated, a byte inserted/removed/replaced)."""
    data = _dumps(draw(frames), draw(st.booleans()))
    how = draw(st.sampled_from(["keep", "keep", "truncate", "insert", "delete", "replace"]))
    if how != "keep" and data:
        i = draw(st.integers(0, len(data) - 1))
        byte = bytes([draw(st.integers(0, 255))])
        data = {"truncate": data[:i], "insert": data[:i] + byte + data[i:],
                "delete": data[:i] + data[i + 1:], "replace": data[:i] + byte + data[i + 1:]}[how]
    return data


TOKENS_TO_INSERT = [b'"', b"{", b"}", b"[", b"]", b",", b":", b"\\", b"\\u", b"\\ud800", b"\xff", b"\xc3",
                    b"\x00", b"1e999", b"-", b"null", b" "]


def mutants(frame, seed, n=MUTANTS):
    """``n`` damaged copies of the encoded ``frame`` from a seeded RNG (cheap, deterministic)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        data = bytearray(frame)
        for _ in range(rng.randint(1, 3)):
            i = rng.randint(0, len(data))
            how = rng.randrange(6)
            if how == 0:
                del data[i:]
            elif how == 1:
                data[i:i] = rng.choice(TOKENS_TO_INSERT)
            elif how == 2:
                del data[i:i + rng.randint(1, 8)]
            elif how == 3 and i < len(data):
                data[i] ^= 1 << rng.randrange(8)
            elif how == 4:
                j = rng.randint(0, len(data))
                data[i:i] = data[min(i, j):max(i, j)][:64]
            else:
                data[i:i] = bytes([rng.randrange(256)])
        out.append(bytes(data).replace(b"\n", b" "))
    return out


@st.composite
def near_valid_lines(draw, frames):
    """Drawn frames (some damaged by hypothesis) each followed by MUTANTS seeded mutants."""
    lines = []
    for frame in draw(st.lists(mutated(frames), min_size=1, max_size=4)):
        lines.append(frame)
        lines += mutants(frame, draw(st.integers(0, 2 ** 32)))
    return lines


@st.composite
def split(draw, stream):
    """``stream`` cut into chunks at arbitrary points."""
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    out, last = [], 0
    for c in cuts + [len(stream)]:
        out.append(stream[last:c])
        last = c
    return out


def count(inputs, data_len):
    COUNT["inputs"] += inputs
    COUNT["examples"] += 1
    COUNT["bytes"] += data_len


def complete_lines(stream, limit):
    """What a host must answer: complete lines that are non-blank or over the limit."""
    lines = stream.split(b"\n")[:-1]
    return sum(1 for line in lines if len(line) > limit - 1 or line.strip())


# ---------------------------------------------------------------- host side

def snap():
    return P.Snapshot("hostA", 7, {"host.hostname": "kvm7", "host.rack": "r1", "vm.role": "web"})


def check_host_output(host, out):
    """Every reply line is a valid, small, known frame; ids are echoed only when safe."""
    assert isinstance(out, bytes)
    frames = []
    for line in out.split(b"\n"):
        if not line:
            continue
        assert len(line) < P.MAX_SNAPSHOT_BYTES
        frame = json.loads(line.decode("utf-8"))
        assert frame["op"] in HOST_REPLY_OPS, frame
        if "id" in frame:
            rid = frame["id"]
            assert (isinstance(rid, int) and not isinstance(rid, bool) and abs(rid) < 2 ** 53) or (
                isinstance(rid, str) and len(rid) <= P.MAX_TOKEN_CHARS), frame
        frames.append(frame)
    assert host._lines.pending < P.MAX_GUEST_FRAME_BYTES
    return frames


def feed_host(chunks):
    host = P.HostSession(snap)
    host.connect()
    host.data_to_send()
    frames = []
    for chunk in chunks:
        events = host.receive(chunk)
        assert all(isinstance(ev, P.HostEvent) for ev in events), events
        frames += check_host_output(host, host.data_to_send())
    errors = sum(1 for f in frames if f["op"] == "error")
    assert errors == host.errors
    return host, frames


@settings(max_examples=int(1000 * SCALE), **FUZZ)
@given(st.data())
def test_host_arbitrary_bytes_arbitrary_splits(data):
    stream = data.draw(st.binary(max_size=300) | st.lists(st.binary(max_size=40), max_size=8).map(b"\n".join)
                       | st.tuples(st.binary(max_size=20), st.integers(4000, 9000)).map(
                           lambda t: t[0] + b"x" * t[1] + t[0]))
    chunks = data.draw(split(stream))
    host, frames = feed_host(chunks)
    assert len(frames) >= complete_lines(stream, P.MAX_GUEST_FRAME_BYTES)
    count(1, len(stream))
    RAN.add("host-bytes")


@settings(max_examples=int(900 * SCALE), **FUZZ)
@given(st.data())
def test_host_near_valid_frames(data):
    lines = data.draw(near_valid_lines(GUEST_FRAMES))
    stream = b"\n".join(lines) + b"\n"
    chunks = data.draw(split(stream))
    host, frames = feed_host(chunks)
    # every request is answered (a bad one with an error): nothing is silently dropped
    assert len(frames) >= complete_lines(stream, P.MAX_GUEST_FRAME_BYTES)
    count(len(lines), len(stream))
    RAN.add("host-frames")


# ---------------------------------------------------------------- guest side

def feed_guest(chunks, synced=True):
    guest = P.GuestSession(token_factory=lambda: "tok")
    guest.connect(now=0.0)
    guest.data_to_send()
    if synced:
        assert guest.receive(b'{"op":"sync","token":"tok"}\n', now=0.0) == [P.Resynced()]
    events = []
    for chunk in chunks:
        got = guest.receive(chunk)
        assert isinstance(got, list)
        for ev in got:
            assert isinstance(ev, P.GuestEvent), ev
            if isinstance(ev, P.SnapshotReceived):
                s = ev.snapshot
                P.validate_host_id(s.host_id)
                assert isinstance(s.generation, int) and s.generation >= 0
                assert P.validate_values(s.values) == s.values
                for v in s.values.values():
                    v.encode("utf-8")
            if isinstance(ev, P.InputDiscarded):
                assert isinstance(ev.error, P.ProtocolError)
        events += got
        assert guest._lines.pending < P.MAX_SNAPSHOT_BYTES
    return guest, events


@settings(max_examples=int(1000 * SCALE), **FUZZ)
@given(st.data())
def test_guest_arbitrary_bytes_arbitrary_splits(data):
    stream = data.draw(st.binary(max_size=300) | st.lists(st.binary(max_size=40), max_size=8).map(b"\n".join))
    feed_guest(data.draw(split(stream)), synced=data.draw(st.booleans()))
    count(1, len(stream))
    RAN.add("guest-bytes")


@settings(max_examples=int(900 * SCALE), **FUZZ)
@given(st.data())
def test_guest_near_valid_snapshots(data):
    lines = data.draw(near_valid_lines(SNAPSHOT_FRAMES))
    stream = b"\n".join(lines) + b"\n"
    guest, events = feed_guest(data.draw(split(stream)))
    count(len(lines), len(stream))
    RAN.add("guest-frames")


@settings(max_examples=int(600 * SCALE), **FUZZ)
@given(st.data())
def test_resync_through_garbage_delivers_the_hosts_snapshot(data):
    """Junk (a half frame from before a reconnect) then the host's real answer, split anywhere:
    the guest must resync and get exactly the host's snapshot, never a frame from the junk."""
    junk = data.draw(st.binary(max_size=200) | mutated(SNAPSHOT_FRAMES))
    host = P.HostSession(snap)
    guest = P.GuestSession(token_factory=lambda: "T%d" % time.monotonic_ns())
    guest.connect()
    host.receive(guest.data_to_send())
    reply = host.data_to_send()
    stream = junk + reply
    events = []
    for chunk in data.draw(split(stream)):
        events += guest.receive(chunk)
    kinds = [type(e).__name__ for e in events]
    assert "Resynced" in kinds, kinds
    after = events[kinds.index("Resynced") + 1:]
    snaps = [e.snapshot for e in after if isinstance(e, P.SnapshotReceived)]
    assert snaps == [snap()]
    assert not any(isinstance(e, P.SnapshotReceived) for e in events[:kinds.index("Resynced")])
    count(1, len(stream))
    RAN.add("resync")


# ---------------------------------------------------------------- LineBuffer against a model

def model_lines(stream, max_line):
    """What LineBuffer must produce for ``stream`` fed in any split: lines, or 'ERR' for over-long."""
    out = []
    parts = stream.split(b"\n")
    for line in parts[:-1]:
        out.append("ERR" if len(line) > max_line - 1 else line)
    if len(parts[-1]) > max_line - 1:
        out.append("ERR")
    return out, (b"" if len(parts[-1]) > max_line - 1 else parts[-1])


@settings(max_examples=int(1500 * SCALE), **FUZZ)
@given(st.integers(2, 40), st.lists(st.sampled_from([b"a", b"\n", b"ab", b"a" * 7, b"\n\n", b"a" * 39, b"b" * 41]),
                                    max_size=30).map(b"".join), st.data())
def test_linebuffer_matches_its_model_under_any_split(max_line, stream, data):
    buf = P.LineBuffer(max_line)
    got = []
    for chunk in data.draw(split(stream)):
        for item in buf.feed(chunk):
            got.append("ERR" if isinstance(item, P.ProtocolError) else item)
        assert buf.pending < max_line
    want, rest = model_lines(stream, max_line)
    assert got == want
    assert buf.pending == len(rest)
    count(1, len(stream))
    RAN.add("linebuffer")


# ---------------------------------------------------------------- deep nesting, big numbers

@pytest.mark.parametrize("payload", [
    b"[" * 4000, b"{\"a\":" * 800, b"[" * 2000 + b"]" * 2000,
    b'{"op":"ping","id":' + b"[" * 3000 + b"]" * 1000 + b"}",
    b'{"op":"ping","id":' + b"9" * 4000 + b"}", b'{"op":"get","key":1e999999}',
])
def test_host_deep_nesting_and_huge_numbers_are_refused_quickly(payload):
    t0 = time.monotonic()
    host, frames = feed_host([payload + b"\n"])
    assert frames and frames[0]["op"] in ("error", "pong")
    assert time.monotonic() - t0 < 1.0
    count(1, len(payload))


@pytest.mark.parametrize("depth", [1000, 50000, 200000])
def test_guest_deep_nesting_is_refused_quickly(depth):
    t0 = time.monotonic()
    for payload in (b"[" * depth, b'{"op":"snapshot","values":' + b'{"a":' * (depth // 5) + b"1"):
        guest, events = feed_guest([payload[:P.MAX_SNAPSHOT_BYTES - 1] + b"\n"])
        assert [type(e) for e in events] == [P.InputDiscarded]
        count(1, len(payload))
    assert time.monotonic() - t0 < 2.0


# ---------------------------------------------------------------- regressions found by the fuzzer

def test_regression_lone_surrogate_id_is_not_echoed():
    """Found by test_host_near_valid_frames: {"id":"\\ud800"} crashed HostSession.receive with
    UnicodeEncodeError (the echoed id cannot be encoded), killing that guest's channel in hostkvd."""
    host, frames = feed_host([b'{"op":"ping","id":"\\ud800"}\n', b'{"op":"ping","id":"ok"}\n'])
    assert frames[0] == {"op": "pong"} and frames[1] == {"op": "pong", "id": "ok"}


def test_regression_lone_surrogate_host_id_is_a_protocol_error():
    """Found by test_guest_near_valid_snapshots: a snapshot whose host_id holds a lone surrogate
    crashed GuestSession.receive with UnicodeEncodeError instead of being discarded."""
    guest, events = feed_guest([b'{"op":"snapshot","host_id":"\\udc80","generation":1,"values":{}}\n'])
    assert [type(e) for e in events] == [P.InputDiscarded]
    assert events[0].error.code == "bad-host-id"


def test_zz_inputs_tried_total():
    """Runs last in this file: the fuzz tests above together tried at least 100,000 inputs."""
    print("\nfuzz: %(inputs)d inputs tried in %(examples)d hypothesis examples, %(bytes)d bytes" % COUNT)
    assert RAN == {"host-bytes", "host-frames", "guest-bytes", "guest-frames", "resync", "linebuffer"}, RAN
    assert COUNT["inputs"] >= 100000, COUNT
