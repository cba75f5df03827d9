"""The seq rules at start (hostkv.agent.restore.plan) as a pure function: every combination of
what an agent can find - no cache / a cache (clean or not) x nothing published / a run dir behind,
equal to, conflicting with, or ahead of the cache."""

import pytest

from hostkv.agent.model import Record
from hostkv.agent.restore import Restored, plan


def rec(seq, data, stale=False, connected=True):
    return Record(seq, "hv-" + data, 7, {"host.hostname": data}, 1700000000.0, stale, connected)


CACHED = rec(5, "A", stale=True, connected=False)

# (cached, clean, published) -> (seq, data, source, save) or None
CASES = [
    ((None, False, None), None),
    ((None, False, rec(3, "B")), (3, "B", "the run dir", True)),
    # a reboot (no run dir): a clean stop keeps the seq; an unclean one skips the possibly lost N+1
    ((CACHED, True, None), (5, "A", "the cache", True)),
    ((CACHED, False, None), (7, "A", "the cache", True)),
    # the run dir as the cache left it: nothing to rewrite unless the clean flag must go
    ((CACHED, False, rec(5, "A")), (5, "A", "the cache", False)),
    ((CACHED, True, rec(5, "A")), (5, "A", "the cache", True)),
    # same seq, other data: a seq never names two data
    ((CACHED, False, rec(5, "B")), (6, "A", "the cache", True)),
    ((CACHED, True, rec(5, "B")), (6, "A", "the cache", True)),
    # the run dir ahead (killed between publication and cache write): adopt it
    ((CACHED, False, rec(6, "B")), (6, "B", "the run dir", True)),
    ((CACHED, True, rec(6, "B")), (6, "B", "the run dir", True)),
    # a run dir behind the cache (cannot normally happen): the cache wins, under its seq
    ((CACHED, False, rec(4, "B")), (5, "A", "the cache", False)),
    ((CACHED, True, rec(4, "B")), (5, "A", "the cache", True)),
]


@pytest.mark.parametrize("found, expected", CASES)
def test_seq_rules(found, expected):
    got = plan(*found)
    if expected is None:
        assert got is None
        return
    seq, data, source, save = expected
    assert isinstance(got, Restored)
    assert (got.record.seq, got.record.values["host.hostname"], got.source, got.save) == (seq, data, source,
                                                                                          save)
    assert got.record.host_id == "hv-" + data
    # whatever is restored is published stale and not connected
    assert got.record.stale is True and got.record.connected is False


def test_plan_touches_nothing_it_is_given():
    cached, published = rec(5, "A"), rec(5, "B")
    plan(cached, False, published)
    assert (cached.seq, cached.stale, published.seq, published.stale) == (5, False, 5, False)


def test_the_rules_never_lower_a_seq_a_reader_saw():
    """Whatever was published or cached, the restored seq is >= both (readers' watch tokens
    stay valid), and equal to the published one only for the very same data."""
    for (cached, clean, published), _ in CASES:
        got = plan(cached, clean, published)
        if got is None:
            continue
        for seen in (cached, published):
            if seen is not None:
                assert got.record.seq >= seen.seq
        if published is not None and got.record.seq == published.seq:
            assert got.record.same_data(published)
