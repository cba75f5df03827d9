"""The wire protocol (hostkv.protocol): limits, framing, resync, version negotiation, bad frames."""
import json
import os
import re

import pytest

from hostkv import protocol as P

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def snap(values=None, host_id="hostA", generation=7):
    return P.Snapshot(host_id, generation, values if values is not None else {"host.hostname": "a"})


def host_and_guest(values=None, tokens=("t1", "t2", "t3", "t4")):
    s = {"snap": snap(values)}
    toks = iter(tokens)
    return s, P.HostSession(lambda: s["snap"]), P.GuestSession(token_factory=lambda: next(toks))


def frames(data):
    return [json.loads(line) for line in data.split(b"\n") if line.strip()]


# ---------------------------------------------------------------- limits

@pytest.mark.parametrize("key", ["host.hostname", "vm.role", "host.a-b_c.9", "vm." + "x" * 125])
def test_valid_keys(key):
    assert P.validate_key(key) == key


@pytest.mark.parametrize("key", ["hostname", "host.", "vm.", "host.a b", "host.ä", "vm.a/b", "guest.x",
                                 "vm." + "x" * 126, "", 5, None, "host.a\n"])
def test_invalid_keys(key):
    with pytest.raises(P.ProtocolError) as err:
        P.validate_key(key)
    assert err.value.code == "bad-key"


def test_value_limit_is_bytes_not_characters():
    P.validate_value("vm.x", "x" * 4096)
    P.validate_value("vm.x", "ü" * 2048)
    with pytest.raises(P.ProtocolError) as err:
        P.validate_value("vm.x", "ü" * 2049)
    assert err.value.code == "value-too-large" and "4096" in str(err.value)
    with pytest.raises(P.ProtocolError):
        P.validate_value("vm.x", 5)
    with pytest.raises(P.ProtocolError):
        P.validate_value("vm.x", "\udcff")   # lone surrogate: not UTF-8


def test_key_count_and_scope():
    P.validate_values({"vm.k%d" % i: "" for i in range(256)})
    with pytest.raises(P.ProtocolError) as err:
        P.validate_values({"vm.k%d" % i: "" for i in range(257)})
    assert err.value.code == "too-many-keys"
    with pytest.raises(P.ProtocolError) as err:
        P.validate_values({"host.a": "1"}, scope="vm")
    assert err.value.code == "bad-scope"


def test_snapshot_over_256k_is_refused_not_truncated():
    values = {"vm.k%d" % i: "x" * 4096 for i in range(70)}    # ~287 KiB
    with pytest.raises(P.ProtocolError) as err:
        P.encode(snap(values).to_frame(), P.MAX_SNAPSHOT_BYTES)
    assert err.value.code == "frame-too-large"


def test_guest_frame_over_4k_is_refused_by_the_guest_side_encoder():
    g = P.GuestSession()
    with pytest.raises(P.ProtocolError):
        g.request("get", key="vm." + "x" * 5000)


# ---------------------------------------------------------------- framing

def test_line_buffer_bounds_memory_and_recovers():
    lb = P.LineBuffer(16)
    assert lb.feed(b"abc") == [] and lb.pending == 3
    out = lb.feed(b"def\nxyz")
    assert out == [b"abcdef"]
    out = lb.feed(b"x" * 10000)                    # 1 GiB of junk behaves the same: bounded
    assert len(out) == 1 and isinstance(out[0], P.ProtocolError) and lb.pending == 0
    assert lb.feed(b"y" * 10000) == [] and lb.pending == 0
    assert lb.feed(b"tail\nok\n") == [b"ok"]
    assert lb.feed(b"0123456789abcde\n") == [b"0123456789abcde"]      # exactly 16 with newline
    assert isinstance(lb.feed(b"0123456789abcdef\n")[0], P.ProtocolError)


def test_line_buffer_split_anywhere():
    data = b'{"op":"ping","id":1}\n{"op":"ping","id":2}\n'
    for cut in range(len(data)):
        lb = P.LineBuffer(64)
        assert lb.feed(data[:cut]) + lb.feed(data[cut:]) == data.split(b"\n")[:2]


# ---------------------------------------------------------------- sessions

def test_push_on_connect_then_get_ping_hello():
    s, host, guest = host_and_guest()
    host.connect()
    pushed = host.data_to_send()
    assert pushed.startswith(b"\n")          # ends any half frame in the guest's pipe
    assert frames(pushed) == [{"op": "snapshot", "v": 1, "host_id": "hostA", "generation": 7,
                               "values": {"host.hostname": "a"}}]
    events = host.receive(b'{"op":"get","id":1,"key":"host.hostname"}\n{"op":"ping","id":"p"}\n')
    assert events == [P.RequestAnswered("get", 1), P.RequestAnswered("ping", "p")]
    out = frames(host.data_to_send())
    assert out[0] == {"op": "value", "id": 1, "key": "host.hostname", "value": "a", "host_id": "hostA",
                      "generation": 7}
    assert out[1] == {"op": "pong", "id": "p"}
    events = host.receive(b'{"op":"get","id":2,"key":"vm.nope"}\n')
    assert [type(e) for e in events] == [P.RequestRefused] and events[0].error.code == "not-found"
    assert frames(host.data_to_send()) == [{"op": "error", "id": 2, "code": "not-found",
                                            "message": "no key vm.nope"}]
    assert host.data_to_send() == b""          # drained


def test_guest_cannot_set_anything():
    s, host, guest = host_and_guest()
    for op in ("set", "put", "delete", "snapshot"):
        host.receive(json.dumps({"op": op, "key": "host.hostname", "value": "evil",
                                 "values": {"host.hostname": "evil"}}).encode() + b"\n")
        assert frames(host.data_to_send())[0]["code"] == "unknown-op"
    assert s["snap"].values == {"host.hostname": "a"}


def exchange(host, guest, now=None):
    """One round trip: the guest's queued bytes to the host and the host's answer back."""
    host.receive(guest.data_to_send())
    return guest.receive(host.data_to_send(), now=now)


def test_full_exchange_through_both_sessions():
    s, host, guest = host_and_guest()
    guest.connect(now=0.0)
    host.connect()
    events = guest.receive(host.data_to_send())
    assert events == [] and not guest.in_sync    # the pushed snapshot arrived during our sync
    events = exchange(host, guest)
    # then: sync reply, snapshot, hello reply - all typed
    assert [type(e) for e in events] == [P.Resynced, P.SnapshotReceived, P.Hello]
    assert events[1].snapshot == s["snap"]
    assert events[2] == P.Hello(None, 1, "hostkvd", events[2].limits) and events[2].limits["keys"] == 256
    assert guest.version == 1 and guest.server == "hostkvd" and guest.in_sync
    assert guest.next_deadline() is None         # in sync, no periodic re-sync: nothing timed
    # later pushes arrive unasked
    s["snap"] = snap({"host.hostname": "b"}, host_id="hostB", generation=1)
    host.push()
    events = guest.receive(host.data_to_send())
    assert [e.snapshot.values for e in events] == [{"host.hostname": "b"}]


def test_the_wire_bytes_are_those_of_version_1():
    """The API changed, the bytes did not: an old agent and a new hostkvd (and vice versa)
    exchange exactly these frames (docs/PROTOCOL.md, "Compatibility")."""
    s, host, guest = host_and_guest()
    guest.connect(now=0.0)
    assert guest.data_to_send() == (b'\n{"op":"sync","token":"t1"}\n'
                                    b'{"agent":"hostkv-agent","op":"hello","versions":[1]}\n')
    guest.receive(b'{"op":"sync","token":"t1"}\n')
    guest.get("host.hostname")
    guest.ping()
    assert guest.data_to_send() == b'{"id":1,"key":"host.hostname","op":"get"}\n{"id":2,"op":"ping"}\n'
    host.connect()
    assert host.data_to_send() == (b'\n{"generation":7,"host_id":"hostA","op":"snapshot","v":1,'
                                   b'"values":{"host.hostname":"a"}}\n')
    host.receive(b'{"op":"sync","token":"t9"}\n')
    assert host.data_to_send() == (b'\n{"op":"sync","token":"t9"}\n{"generation":7,"host_id":"hostA",'
                                   b'"op":"snapshot","v":1,"values":{"host.hostname":"a"}}\n')


def test_resync_discards_half_frames_left_by_a_migration():
    s, host, guest = host_and_guest()
    guest.connect(now=0.0)
    host.receive(guest.data_to_send())
    reply = host.data_to_send()
    # half of an old frame is in the pipe before the new host's bytes
    stale_half = b'{"generation":3,"host_id":"OLD","op":"snapshot","v":1,"values":{"host.hostname":"ol'
    events = guest.receive(stale_half + reply[:20])
    events += guest.receive(reply[20:])
    snaps = [e.snapshot for e in events if isinstance(e, P.SnapshotReceived)]
    assert snaps == [s["snap"]]
    assert all(sn.host_id != "OLD" for sn in snaps)


def synced(host, guest, now=0.0):
    guest.connect(now=now)
    exchange(host, guest, now=now)
    assert guest.in_sync
    return guest


def test_garbage_after_sync_starts_a_new_sync():
    s, host, guest = host_and_guest()
    synced(host, guest)
    assert guest.sync_token is None
    events = guest.receive(b"\x00\xffgarbage\n", now=1.0)
    assert [type(e) for e in events] == [P.InputDiscarded] and events[0].hold == 0
    assert guest.sync_token == "t2" and not guest.in_sync
    assert frames(guest.data_to_send()) == [{"op": "sync", "token": "t2"}]
    assert guest.next_deadline() == 1.0 + P.SYNC_TIMEOUT


def test_invalid_snapshot_from_host_is_not_accepted():
    s, host, guest = host_and_guest()
    synced(host, guest)
    bad = {"op": "snapshot", "v": 1, "host_id": "h", "generation": 1, "values": {"../etc/passwd": "x"}}
    events = guest.receive(json.dumps(bad).encode() + b"\n")
    assert isinstance(events[0], P.InputDiscarded) and events[0].error.code == "bad-key"


def test_an_unanswered_sync_is_sent_again_with_a_new_token_when_its_deadline_is_due():
    s, host, guest = host_and_guest(tokens=("t1", "t2", "t3"))
    guest = P.GuestSession(token_factory=iter(("t1", "t2", "t3")).__next__, sync_timeout=2.0)
    guest.connect(now=10.0)
    guest.data_to_send()
    assert guest.next_deadline() == 12.0
    assert guest.tick(now=11.9) == [] and guest.data_to_send() == b""
    assert guest.tick(now=12.0) == [P.SyncTimedOut(2)]
    assert frames(guest.data_to_send()) == [{"op": "sync", "token": "t2"}]
    assert guest.next_deadline() == 14.0
    # the answer to the old token is ignored; the new one ends the sync
    assert guest.receive(b'{"op":"sync","token":"t1"}\n', now=13.0) == []
    assert guest.receive(b'{"op":"sync","token":"t2"}\n', now=13.0) == [P.Resynced()]
    assert guest.next_deadline() is None


def test_a_host_answering_every_sync_with_bad_data_gets_the_next_sync_held_back():
    bad = b'{"op":"snapshot","v":1,"host_id":"h","generation":1,"values":{"nope":"x"}}\n'
    guest = P.GuestSession(token_factory=("t%d" % i for i in range(100)).__next__)
    guest.connect(now=0.0)
    guest.data_to_send()
    holds = []
    now = 0.0
    for _ in range(9):
        guest.receive(b'{"op":"sync","token":"%s"}\n' % guest.sync_token.encode(), now=now)
        event, = guest.receive(bad, now=now)
        holds.append(event.hold)
        if event.hold:
            assert guest.data_to_send() == b""             # held: nothing sent yet
            assert guest.next_deadline() == now + event.hold
            now += event.hold
            guest.tick(now=now)
        assert frames(guest.data_to_send()) == [{"op": "sync", "token": guest.sync_token}]
    assert holds == [0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    # good data ends the streak
    guest.receive(b'{"op":"sync","token":"%s"}\n' % guest.sync_token.encode(), now=now)
    guest.receive(b'{"op":"snapshot","v":1,"host_id":"h","generation":1,"values":{}}\n', now=now)
    assert guest.receive(b"junk\n", now=now)[0].hold == 0


def test_periodic_resync():
    s, host, guest = host_and_guest()
    guest = P.GuestSession(token_factory=iter(("t1", "t2")).__next__, resync_interval=300)
    synced(host, guest, now=5.0)
    assert guest.next_deadline() == 305.0
    assert guest.tick(now=305.0) == [] and not guest.in_sync
    assert frames(guest.data_to_send()) == [{"op": "sync", "token": "t2"}]


def test_requests_wait_for_the_sync_and_are_sent_again_after_a_resync():
    s, host, guest = host_and_guest()
    guest.connect(now=0.0)
    req = guest.get("host.hostname")             # before the sync: held in the session
    assert b'"op":"get"' not in guest.data_to_send()
    host.connect()
    host.data_to_send()                          # (the pushed snapshot is lost in the sync)
    host.receive(b'{"op":"sync","token":"t1"}\n')
    events = guest.receive(host.data_to_send())
    assert [type(e) for e in events] == [P.Resynced, P.SnapshotReceived]
    events = exchange(host, guest)               # the get goes out once in sync
    assert events == [P.Value(req, "host.hostname", "a", "hostA", 7)]
    # a request in flight when garbage starts a new sync: its reply is discarded with
    # everything before the sync reply, and it is sent again after it - one reply in all
    req2 = guest.get("host.hostname")
    host.receive(guest.data_to_send())
    answer = host.data_to_send()
    assert guest.receive(b"garbage\n")[0].error.code == "bad-json"
    assert guest.receive(answer) == []           # discarded: not the sync reply
    events = exchange(host, guest)
    assert [type(e) for e in events] == [P.Resynced, P.SnapshotReceived]
    assert exchange(host, guest) == [P.Value(req2, "host.hostname", "a", "hostA", 7)]
    assert guest.pending == []


def test_errors_pongs_cancel_and_disconnect():
    s, host, guest = host_and_guest()
    synced(host, guest)
    missing = guest.get("vm.missing")
    ping = guest.ping()
    assert guest.pending == [missing, ping]
    events = exchange(host, guest)
    assert events == [P.Error(missing, "not-found", "no key vm.missing"), P.Pong(ping)]
    late = guest.get("host.hostname")
    guest.cancel(late)
    assert exchange(host, guest) == []           # the reply to a cancelled request is ignored
    lost = guest.get("host.hostname")
    assert guest.disconnect() == [lost]
    assert not guest.connected and guest.next_deadline() is None and guest.data_to_send() == b""
    assert guest.receive(b'{"op":"pong"}\n') == []  # nothing is accepted while disconnected


def test_replies_are_typed_and_invalid_ones_are_discarded():
    s, host, guest = host_and_guest()
    synced(host, guest)
    req = guest.get("host.hostname")
    guest.data_to_send()
    bad = b'{"op":"value","id":%d,"key":"host.hostname","value":5,"host_id":"h","generation":1}\n' % req
    events = guest.receive(bad)
    assert [type(e) for e in events] == [P.InputDiscarded] and events[0].error.code == "bad-value"
    assert guest.pending == [req]                # sent again after the resync
    events = guest.receive(b'{"op":"sync","token":"t2"}\n{"op":"error","code":"' + b"c" * 99
                           + b'","message":5}\n{"op":"notice"}\n{"op":"notice","id":77}\n')
    # (an unknown op naming an id that is not ours is ignored like any stale reply)
    assert events == [P.Resynced(), P.Error(None, "c" * 40, ""), P.UnknownReply(None, "notice")]


def test_version_negotiation_both_directions():
    assert P.negotiate([1]) == 1
    assert P.negotiate([1, 2, 3]) == 1          # a newer agent talks to this host at v1
    with pytest.raises(P.ProtocolError) as err:
        P.negotiate([7, 8])
    assert err.value.code == "no-common-version"
    s, host, guest = host_and_guest()
    events = host.receive(b'{"op":"hello","versions":[1,2],"agent":"hostkv-agent/9","future":true}\n')
    assert events == [P.GuestHello(1, "hostkv-agent/9")]
    out = frames(host.data_to_send())
    assert out[0]["version"] == 1 and out[0]["limits"]["value_bytes"] == 4096
    host.receive(b'{"op":"hello","versions":[2]}\n')
    assert frames(host.data_to_send())[0]["code"] == "no-common-version"
    # a newer host's frames with fields and ops we do not know are accepted
    g = P.GuestSession(token_factory=lambda: "t")
    g.connect()
    events = g.receive(b'{"op":"sync","token":"t"}\n{"op":"snapshot","v":1,"host_id":"h","generation":1,'
                       b'"values":{},"new_field":[1]}\n{"op":"notice","text":"from the future"}\n')
    assert [type(e) for e in events] == [P.Resynced, P.SnapshotReceived, P.UnknownReply]


@pytest.mark.parametrize("line, code", [
    (b"not json", "bad-json"),
    (b"[1,2]", "bad-frame"),
    (b'{"no":"op"}', "bad-frame"),
    (b'{"op":5}', "bad-frame"),
    (b"\xff\xfe", "bad-utf8"),
    (b'{"op":"sync","token":"has space"}', "bad-token"),
    (b'{"op":"get","key":"host.a b"}', "bad-key"),
    (b"[" * 100000, "frame-too-large"),
    (b"[" * 4000, "bad-json"),
])
def test_malformed_frames_get_a_clear_error_and_the_session_survives(line, code):
    s, host, guest = host_and_guest()
    events = host.receive(line + b"\n")
    assert [type(e) for e in events] == [P.RequestRefused] and events[0].error.code == code
    out = frames(host.data_to_send())
    assert out[0]["op"] == "error" and out[0]["code"] == code and out[0]["message"]
    assert host.errors == 1
    host.receive(b'{"op":"ping","id":9}\n')
    assert frames(host.data_to_send()) == [{"op": "pong", "id": 9}]


def test_request_ids_are_echoed_only_when_safe():
    s, host, guest = host_and_guest()
    host.receive(b'{"op":"ping","id":{"x":1}}\n{"op":"ping","id":"' + b"x" * 100 + b'"}\n')
    assert frames(host.data_to_send()) == [{"op": "pong"}, {"op": "pong"}]


@pytest.mark.parametrize("host_id", ["", "a\x00b", "line\nbreak", "\x1b[31m", "x" * 129, 5, None, "\udcff"])
def test_bad_host_ids_are_refused(host_id):
    with pytest.raises(P.ProtocolError) as err:
        P.validate_host_id(host_id)
    assert err.value.code == "bad-host-id"


def test_good_host_ids():
    for host_id in ("4f0c6c1e-8f3a-4a52-9d1e-0b8c2b7c2a10", "kvm7.dc1", "hôte-7", "x" * 128):
        assert P.validate_host_id(host_id) == host_id


# ---------------------------------------------------------------- the error-code registry

PROTOCOL_MD = os.path.join(REPO, "docs", "PROTOCOL.md")
SOURCE_ROOTS = ("protocol", "guest_agent", "host_service", "cobbler_plugin", "koan_patch")


def test_error_codes_registry_matches_protocol_md():
    with open(PROTOCOL_MD) as f:
        doc = f.read()
    section = doc.split("\n## Error codes\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z0-9-]+)` \| (sent|data) \| ", section, re.M)
    assert len(rows) == len(set(code for code, _ in rows))
    assert dict(rows) == dict((code, kind) for code, (kind, _) in P.ERROR_CODES.items())


def test_every_error_code_the_code_uses_is_registered():
    """Any ProtocolError("code", ...) or error_frame("code", ...) in the shipped code uses a
    registered code (a typo or a new code without its line in PROTOCOL.md fails here)."""
    used = {}
    pattern = re.compile(r"""(?:ProtocolError|error_frame)\(\s*["']([a-z0-9-]+)["']""")
    for root in SOURCE_ROOTS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(REPO, root)):
            for name in filenames:
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    with open(path) as f:
                        for code in pattern.findall(f.read()):
                            used.setdefault(code, path)
    assert len(used) >= 10, used                      # the scan found the protocol's own codes
    unknown = dict((code, path) for code, path in used.items() if code not in P.ERROR_CODES)
    assert unknown == {}


def test_sent_codes_are_the_ones_the_host_can_send():
    """Every ``sent`` code really is produced by HostSession for some guest input."""
    s, host, guest = host_and_guest()
    inputs = [b"x" * 5000, b"\xff", b"nope", b"[1]", b'{"op":"set"}', b'{"op":"hello","versions":[9]}',
              b'{"op":"sync","token":"a b"}', b'{"op":"get","key":"bad"}', b'{"op":"get","key":"vm.none"}']
    host.receive(b"\n".join(inputs) + b"\n")
    produced = set(f["code"] for f in frames(host.data_to_send()))
    s["snap"] = snap(dict(("vm.k%d" % i, "v") for i in range(P.MAX_KEYS + 1)))
    assert host.push() is not None
    produced |= set(f["code"] for f in frames(host.data_to_send()))
    assert produced == set(code for code, (kind, _) in P.ERROR_CODES.items() if kind == "sent")


def test_undeliverable_snapshot_is_never_sent_and_the_guest_is_told():
    """Over a limit on the host side: no snapshot frame leaves, an id-less error says why."""
    s, host, guest = host_and_guest({"host.a": "1"})
    host.connect()
    host.data_to_send()
    s["snap"] = snap(dict(("vm.k%d" % i, "v") for i in range(P.MAX_KEYS + 1)))
    err = host.push()
    assert err is not None and err.code == "too-many-keys"
    out = frames(host.data_to_send())
    assert [f["op"] for f in out] == ["error"]
    assert out[0]["code"] == "snapshot-undeliverable" and "id" not in out[0]
    assert "256" in out[0]["message"] or "keys" in out[0]["message"]


def test_a_snapshot_from_another_host_makes_the_guest_sync_and_hello_with_it():
    """A live migration gives the guest no connect edge: the landing host's hostkvd pushes, and
    counts the guest as served only once it speaks (issue 10.3b).  A snapshot whose host_id
    differs from the last one makes the guest sync and hello; one from the same host does not."""
    s, host_a, guest = host_and_guest()
    synced(host_a, guest)
    exchange(host_a, guest)
    guest.data_to_send()
    host_b = P.HostSession(lambda: snap(host_id="hostB", generation=9))
    host_b.connect()
    events = guest.receive(host_b.data_to_send())
    assert [e.snapshot.host_id for e in events if isinstance(e, P.SnapshotReceived)] == ["hostB"]
    sent = frames(guest.data_to_send())
    assert [f["op"] for f in sent] == ["sync", "hello"] and not guest.in_sync
    events = host_b.receive(json.dumps(sent[0]).encode() + b"\n" + json.dumps(sent[1]).encode() + b"\n")
    assert len(events) == 2
    assert [type(e) for e in guest.receive(host_b.data_to_send())][:2] == [P.Resynced, P.SnapshotReceived]
    assert guest.in_sync
    host_b.push()                                   # the same host again: nothing to say
    guest.receive(host_b.data_to_send())
    assert guest.data_to_send() == b""
