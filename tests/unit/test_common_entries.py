"""hostkv.common.entries: the one key/value rule (keys, scopes, bare keys, the value characters)."""
import pytest
from hypothesis import given, settings, strategies as st

from hostkv import protocol
from hostkv.common import entries


def xml_char(c):
    """XML 1.0's Char production, written out independently of entries' implementation."""
    p = ord(c)
    return p in (0x9, 0xA, 0xD) or 0x20 <= p <= 0xD7FF or 0xE000 <= p <= 0xFFFD or 0x10000 <= p <= 0x10FFFF


@pytest.mark.parametrize("value", ["", "plain", "tab\there", "x\r\ny\r", "\n", "  both  ", "\x7f\x80\x9f",
                                   "\u2028\u2029", "\ufffd", "\U0001f600\U0010ffff", "<&>'\""])
def test_values_the_rule_allows(value):
    assert entries.validate_value("vm.x", value) == value


@pytest.mark.parametrize("value, index, described", [
    ("a\x01b", 2, "U+0001 (a control character)"), ("\x00", 1, "U+0000 (a control character)"),
    ("ok\x1b[0m", 3, "U+001B (a control character)"), ("\x0b", 1, "U+000B (a control character)"),
    ("fine\ufffe", 5, "U+FFFE (a non-character)"), ("\uffff", 1, "U+FFFF (a non-character)"),
    ("x\udc80", 2, "U+DC80 (a lone surrogate)"),
])
def test_values_the_rule_refuses_name_key_character_and_position(value, index, described):
    with pytest.raises(entries.EntryError) as err:
        entries.validate_value("host.motd", value)
    assert err.value.code == "bad-value"
    assert str(err.value) == "value of host.motd has %s at character %d; %s" % (described, index,
                                                                                entries.VALUE_RULE)


def test_size_limit_is_utf8_bytes():
    entries.validate_value("vm.x", "ü" * 2048)
    with pytest.raises(entries.EntryError) as err:
        entries.validate_value("vm.x", "ü" * 2049)
    assert err.value.code == "value-too-large" and str(err.value) == \
        "value of vm.x is 4098 bytes, the limit is 4096"
    with pytest.raises(entries.EntryError, match="must be a string, not int"):
        entries.validate_value("vm.x", 5)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=30))
def test_the_rule_is_exactly_xml_1_0_char(value):
    try:
        entries.validate_value("vm.x", value)
        ok = True
    except entries.EntryError:
        ok = False
    assert ok == all(xml_char(c) for c in value)


@pytest.mark.parametrize("name, scope, key", [
    ("rack", "host", "host.rack"), ("host.rack", "host", "host.rack"), ("role", "vm", "vm.role"),
    ("vm.a.b", "vm", "vm.a.b"), ("host", "host", "host.host"), ("a-b_c", "vm", "vm.a-b_c"),
])
def test_bare_key_scoping(name, scope, key):
    assert entries.scoped_key(name, scope) == key


@pytest.mark.parametrize("name, scope, code, words", [
    ("vm.role", "host", "bad-scope", "vm.role is not a host.* key"),
    ("host.x", "vm", "bad-scope", "host.x is not a vm.* key"),
    ("rack.row", "host", "bad-key", "key 'rack.row' must be 'host.' or 'vm.'"),   # dotted: a full key
    ("hots.rack", "host", "bad-key", "key 'hots.rack' must be"),                   # a typo, never a new key
    ("r@ck", "host", "bad-key", "key 'host.r@ck' must be"), ("", "vm", "bad-key", "key 'vm.' must be"),
])
def test_bare_key_scoping_refuses(name, scope, code, words):
    with pytest.raises(entries.EntryError) as err:
        entries.scoped_key(name, scope)
    assert err.value.code == code and words in str(err.value)


def test_the_protocol_delegates_to_the_rule():
    """protocol.validate_* (tests/unit/test_protocol.py checks counts and scopes through them) keep
    their names and raise ProtocolError, an EntryError with the same code and words."""
    assert (protocol.MAX_KEY_BYTES, protocol.MAX_VALUE_BYTES, protocol.MAX_KEYS) == (128, 4096, 256)
    with pytest.raises(protocol.ProtocolError) as perr:
        protocol.validate_value("vm.x", "a\x01b")
    with pytest.raises(entries.EntryError) as eerr:
        entries.validate_value("vm.x", "a\x01b")
    assert (perr.value.code, str(perr.value)) == (eerr.value.code, str(eerr.value))
    assert isinstance(perr.value, entries.EntryError)


def test_the_protocol_refuses_a_bad_value_in_both_directions():
    """host -> guest: a snapshot frame carrying a control character is discarded by the guest
    (never published); host side: hostkvd cannot build such a snapshot (validate_values)."""
    frame = protocol.encode(protocol.snapshot_frame("h", 1, {"vm.x": "a\x01b"}), protocol.MAX_SNAPSHOT_BYTES)
    guest = protocol.GuestSession(token_factory=lambda: "t")
    guest.connect()
    guest.receive(b'{"op":"sync","token":"t"}\n')
    events = guest.receive(frame)
    assert [type(e).__name__ for e in events] == ["InputDiscarded"]
    assert events[0].error.code == "bad-value" and "U+0001" in str(events[0].error)
    with pytest.raises(protocol.ProtocolError):
        protocol.validate_values({"vm.x": "a\x01b"})
    ok = protocol.encode(protocol.snapshot_frame("h", 2, {"vm.x": "x\r\ny\r"}), protocol.MAX_SNAPSHOT_BYTES)
    events = guest.receive(b'{"op":"sync","token":"t"}\n' + ok)          # the discard started a resync
    events = [e for e in events if type(e).__name__ == "SnapshotReceived"]
    assert events[0].snapshot.values == {"vm.x": "x\r\ny\r"}
