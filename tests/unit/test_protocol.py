"""The wire protocol (hostkv.protocol): limits, framing, resync, version negotiation, bad frames."""
import json

import pytest

from hostkv import protocol as P


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
    pushed = host.connected()
    assert pushed.startswith(b"\n")          # ends any half frame in the guest's pipe
    assert frames(pushed) == [{"op": "snapshot", "v": 1, "host_id": "hostA", "generation": 7,
                               "values": {"host.hostname": "a"}}]
    out = frames(host.receive(b'{"op":"get","id":1,"key":"host.hostname"}\n{"op":"ping","id":"p"}\n'))
    assert out[0] == {"op": "value", "id": 1, "key": "host.hostname", "value": "a", "host_id": "hostA",
                      "generation": 7}
    assert out[1] == {"op": "pong", "id": "p"}
    out = frames(host.receive(b'{"op":"get","id":2,"key":"vm.nope"}\n'))
    assert out == [{"op": "error", "id": 2, "code": "not-found", "message": "no key vm.nope"}]


def test_guest_cannot_set_anything():
    s, host, guest = host_and_guest()
    for op in ("set", "put", "delete", "snapshot"):
        out = frames(host.receive(json.dumps({"op": op, "key": "host.hostname", "value": "evil",
                                              "values": {"host.hostname": "evil"}}).encode() + b"\n"))
        assert out[0]["code"] == "unknown-op"
    assert s["snap"].values == {"host.hostname": "a"}


def test_full_exchange_through_both_sessions():
    s, host, guest = host_and_guest()
    guest.connected()
    events = guest.receive(host.connected() + host.receive(guest.data_to_send()))
    kinds = [type(e).__name__ for e in events]
    # the pushed snapshot arrived while our sync was outstanding: discarded; then sync, snapshot, hello
    assert kinds == ["Resynced", "SnapshotReceived", "ReplyReceived"]
    assert events[1].snapshot == s["snap"]
    assert guest.version == 1
    # later pushes arrive unasked
    s["snap"] = snap({"host.hostname": "b"}, host_id="hostB", generation=1)
    events = guest.receive(host.push())
    assert [e.snapshot.values for e in events] == [{"host.hostname": "b"}]


def test_resync_discards_half_frames_left_by_a_migration():
    s, host, guest = host_and_guest()
    guest.connected()
    reply = host.receive(guest.data_to_send())
    # half of an old frame is in the pipe before the new host's bytes
    stale_half = b'{"generation":3,"host_id":"OLD","op":"snapshot","v":1,"values":{"host.hostname":"ol'
    events = guest.receive(stale_half + reply[:20])
    events += guest.receive(reply[20:])
    snaps = [e.snapshot for e in events if isinstance(e, P.SnapshotReceived)]
    assert snaps == [s["snap"]]
    assert all(sn.host_id != "OLD" for sn in snaps)


def test_garbage_after_sync_starts_a_new_sync():
    s, host, guest = host_and_guest()
    guest.connected()
    guest.receive(host.receive(guest.data_to_send()))
    assert guest.sync_token is None
    events = guest.receive(b"\x00\xffgarbage\n")
    assert isinstance(events[0], P.InputDiscarded)
    assert guest.sync_token == "t2"
    assert frames(guest.data_to_send()) == [{"op": "sync", "token": "t2"}]


def test_invalid_snapshot_from_host_is_not_accepted():
    s, host, guest = host_and_guest()
    guest.connected()
    guest.receive(host.receive(guest.data_to_send()))
    bad = {"op": "snapshot", "v": 1, "host_id": "h", "generation": 1, "values": {"../etc/passwd": "x"}}
    events = guest.receive(json.dumps(bad).encode() + b"\n")
    assert isinstance(events[0], P.InputDiscarded) and events[0].error.code == "bad-key"


def test_version_negotiation_both_directions():
    assert P.negotiate([1]) == 1
    assert P.negotiate([1, 2, 3]) == 1          # a newer agent talks to this host at v1
    with pytest.raises(P.ProtocolError) as err:
        P.negotiate([7, 8])
    assert err.value.code == "no-common-version"
    s, host, guest = host_and_guest()
    out = frames(host.receive(b'{"op":"hello","versions":[1,2],"agent":"hostkv-agent/9","future":true}\n'))
    assert out[0]["version"] == 1 and out[0]["limits"]["value_bytes"] == 4096
    out = frames(host.receive(b'{"op":"hello","versions":[2]}\n'))
    assert out[0]["code"] == "no-common-version"
    # a newer host's frames with fields we do not know are accepted
    g = P.GuestSession(token_factory=lambda: "t")
    g.connected()
    events = g.receive(b'{"op":"sync","token":"t"}\n{"op":"snapshot","v":1,"host_id":"h","generation":1,'
                       b'"values":{},"new_field":[1]}\n{"op":"notice","text":"from the future"}\n')
    assert [type(e).__name__ for e in events] == ["Resynced", "SnapshotReceived", "ReplyReceived"]


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
    out = frames(host.receive(line + b"\n"))
    assert out[0]["op"] == "error" and out[0]["code"] == code and out[0]["message"]
    assert host.errors == 1
    assert frames(host.receive(b'{"op":"ping","id":9}\n')) == [{"op": "pong", "id": 9}]


def test_request_ids_are_echoed_only_when_safe():
    s, host, guest = host_and_guest()
    out = frames(host.receive(b'{"op":"ping","id":{"x":1}}\n{"op":"ping","id":"' + b"x" * 100 + b'"}\n'))
    assert out == [{"op": "pong"}, {"op": "pong"}]


@pytest.mark.parametrize("host_id", ["", "a\x00b", "line\nbreak", "\x1b[31m", "x" * 129, 5, None, "\udcff"])
def test_bad_host_ids_are_refused(host_id):
    with pytest.raises(P.ProtocolError) as err:
        P.validate_host_id(host_id)
    assert err.value.code == "bad-host-id"


def test_good_host_ids():
    for host_id in ("4f0c6c1e-8f3a-4a52-9d1e-0b8c2b7c2a10", "kvm7.dc1", "hôte-7", "x" * 128):
        assert P.validate_host_id(host_id) == host_id
