"""The cache: atomic, validated, and the seq never goes backwards across restarts.

The seq rules themselves are a pure function (test_agent_restore.py); here the real
:class:`hostkv.agent.store.Store` applies them to real run dirs and caches.
"""

import json
import os
import time

import pytest

from hostkv import protocol
from hostkv.agent import cache
from hostkv.agent.model import History, Record
from hostkv.agent.publish import Publisher, read_current
from hostkv.agent.store import Store


def rec(seq, values=None, host_id="hv1"):
    return Record(seq, host_id, 4, values or {"host.hostname": "hv1"}, 1700000000.5, False, True)


def test_round_trip_is_stale_and_disconnected(tmp_path):
    state = str(tmp_path / "state" / "deeper")
    assert cache.load(state) is None
    cache.save(state, rec(9, {"host.hostname": "hv1", "vm.x": "ü\n'"}))
    got = cache.load(state)
    assert (got.seq, got.host_id, got.generation, got.values) == (9, "hv1", 4, {"host.hostname": "hv1",
                                                                                "vm.x": "ü\n'"})
    assert got.stale is True and got.connected is False and got.received_at == 1700000000.5
    assert os.listdir(state) == ["snapshot.json"]           # no temp file left behind


@pytest.mark.parametrize("content,needle", [
    ("{oops", "not valid JSON"),
    (json.dumps({"format": 99}), "unknown format"),
    (json.dumps({"format": 1, "seq": -1}), "seq"),
    (json.dumps({"format": 1, "seq": 1, "generation": 1, "received_at": 1, "host_id": "h",
                 "values": {"bad key": "v"}}), "bad key"),
])
def test_invalid_cache_is_refused_with_the_reason(tmp_path, content, needle):
    (tmp_path / "snapshot.json").write_text(content)
    with pytest.raises(cache.CacheError) as info:
        cache.load(str(tmp_path))
    assert needle in str(info.value) and "snapshot.json" in str(info.value)


def _store(tmp_path):
    return Store(str(tmp_path / "run"), str(tmp_path / "state"), time.time, time.monotonic)


def _start_agent(tmp_path):
    """What an agent start followed by a clean stop does to the data."""
    store = _store(tmp_path)
    store.restore()
    store.close()
    return store


def _apply(store, snap):
    """A snapshot the way the loop handles it: published, then persisted."""
    change = store.apply(snap, True)
    store.persist(change)
    return change


def test_run_dir_ahead_of_the_cache_is_adopted(tmp_path):
    """A run dir (agent killed after a publication, before its cache write; no reboot) newer
    than the cache: what is published stays, under its own seq, and becomes the cache."""
    cache.save(str(tmp_path / "state"), rec(3, {"host.hostname": "old"}))
    pub = Publisher(str(tmp_path / "run"))
    pub.prepare()
    pub.publish(rec(4, {"host.hostname": "newer"}))
    agent = _start_agent(tmp_path)
    assert agent.seq == 4
    doc = read_current(str(tmp_path / "run"))
    assert doc["seq"] == 4 and doc["stale"] is True and doc["values"] == {"host.hostname": "newer"}
    assert cache.load(str(tmp_path / "state")).seq == 4


def test_run_dir_with_the_cache_seq_but_other_data_gets_a_new_seq(tmp_path):
    cache.save(str(tmp_path / "state"), rec(3, {"host.hostname": "old"}))
    pub = Publisher(str(tmp_path / "run"))
    pub.prepare()
    pub.publish(rec(3, {"host.hostname": "other"}))
    agent = _start_agent(tmp_path)
    assert agent.seq == 4 and cache.load(str(tmp_path / "state")).seq == 4
    assert read_current(str(tmp_path / "run"))["values"] == {"host.hostname": "old"}


def _snap(i):
    return protocol.Snapshot("hv%d" % (i % 3), i, {"host.hostname": "hv%d" % (i % 3), "vm.n": str(i)})


def test_at_most_one_publication_is_ahead_of_the_cache(tmp_path, monkeypatch):
    """The cache is written after each publication (its fsync is off the watchers' path) but
    before the next snapshot: whenever anything is published, the cache on disk is at most
    one seq behind it.  So a kill or power loss can lose at most cached seq + 1."""
    state = str(tmp_path / "state")
    store = _store(tmp_path)
    store.restore()
    real_publish = store.publisher.publish
    checked = []

    def checking_publish(record, cleanup=True):
        on_disk = cache.load(state)
        assert record.seq <= (on_disk.seq if on_disk else 0) + 1, (record.seq, on_disk)
        checked.append(record.seq)
        return real_publish(record, cleanup=cleanup)

    monkeypatch.setattr(store.publisher, "publish", checking_publish)
    for i in range(1, 30):
        _apply(store, _snap(i // 2))               # pairs: a new seq, then a confirmation
        assert cache.load(state).seq == store.seq  # the cache caught up before the next one
    assert checked[-1] == store.seq == 15 and len(checked) == 29
    store.close()


def test_unclean_stop_between_publication_and_cache_write_then_reboot(tmp_path, monkeypatch):
    """The worst case: seq N+1 published, the cache write lost (kill -9 / power loss), reboot.
    The cached data comes back under N+2: never a seq below one a reader saw, never one seq
    naming two different data."""
    state, run = str(tmp_path / "state"), str(tmp_path / "run")
    store = _store(tmp_path)
    store.restore()
    _apply(store, _snap(1))
    _apply(store, _snap(2))
    assert cache.load(state).seq == 2
    monkeypatch.setattr(cache, "save", lambda *a, **k: None)      # dies before the cache write
    _apply(store, _snap(3))
    seen = read_current(run)
    assert seen["seq"] == 3 and cache.load(state).seq == 2
    monkeypatch.undo()                                             # no close(): killed
    from hostkv.agent.publish import rmtree
    rmtree(run)                                                    # reboot: /run is gone
    again = _store(tmp_path)
    again.restore()
    doc = read_current(run)
    assert doc["seq"] == 4 and doc["stale"] is True and doc["values"] == _snap(2).values
    assert cache.load_state(state)[0].seq == 4
    _apply(again, _snap(3))                                        # the host repeats seq 3's data
    assert read_current(run)["seq"] == 5
    again.close()


def test_clean_stop_then_reboot_keeps_the_seq(tmp_path):
    state, run = str(tmp_path / "state"), str(tmp_path / "run")
    store = _store(tmp_path)
    store.restore()
    _apply(store, _snap(1))
    store.close()
    assert cache.load_state(state)[1] is True
    from hostkv.agent.publish import rmtree
    rmtree(run)
    again = _store(tmp_path)
    again.restore()
    assert again.seq == 1 and read_current(run)["seq"] == 1
    # the clean mark is gone before anything new can be published
    assert cache.load_state(state)[1] is False
    again.close()


def test_same_seq_kept_when_run_dir_matches_the_cache(tmp_path):
    cache.save(str(tmp_path / "state"), rec(5))
    pub = Publisher(str(tmp_path / "run"))
    pub.prepare()
    pub.publish(rec(5))
    assert _start_agent(tmp_path).seq == 5


def test_run_dir_alone_is_adopted_as_stale(tmp_path):
    pub = Publisher(str(tmp_path / "run"))
    pub.prepare()
    pub.publish(rec(8))
    agent = _start_agent(tmp_path)
    assert agent.seq == 8 and cache.load(str(tmp_path / "state")).seq == 8
    assert read_current(str(tmp_path / "run"))["stale"] is True


def test_history_answers_value_at():
    h = History(10, {"host.a": "1"})
    h.add(11, {"host.a": "2"})
    h.add(12, {"host.a": "2", "host.b": "x"})
    h.add(13, {"host.b": "x"})
    assert h.value_at("host.a", 10) == (True, "1")
    assert h.value_at("host.a", 11) == (True, "2")
    assert h.value_at("host.a", 13) == (True, None)
    assert h.value_at("host.b", 11) == (True, None)
    assert h.value_at("host.a", 9) == (False, None)      # before the history: unknown
    assert h.value_at("host.a", 99) == (False, None)     # a token from another life
    small = History(0, {}, max_steps=2)
    for seq in range(1, 6):
        small.add(seq, {"host.a": str(seq)})
    assert small.base_seq == 3 and small.value_at("host.a", 3) == (True, "3")
    assert small.value_at("host.a", 2) == (False, None)


def test_status_timings_are_those_of_the_last_new_data(tmp_path):
    """A re-confirmation of the same data (the sync reply after a migration) is published too,
    but status keeps the time stamps of the publication that brought the data."""
    store = _store(tmp_path)
    store.restore()
    try:
        change = _apply(store, protocol.Snapshot("hv1", 1, {"host.hostname": "hv1"}))
        change.timings.update(read_at=1.0, swapped_at=1.5)
        again = _apply(store, protocol.Snapshot("hv1", 2, {"host.hostname": "hv1"}))
        again.timings.update(read_at=9.0, swapped_at=9.5)
        assert not again.new_data
        assert store.status()["timings"] == {"read_at": 1.0, "swapped_at": 1.5, "seq": change.record.seq}
        newer = _apply(store, protocol.Snapshot("hv2", 3, {"host.hostname": "hv2"}))
        newer.timings.update(read_at=20.0)
        assert store.status()["timings"] == {"read_at": 20.0, "seq": newer.record.seq}
    finally:
        store.close()
