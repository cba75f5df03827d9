"""The cache: atomic, validated, and the seq never goes backwards across restarts."""

import json
import os

import pytest

from hostkv.agent import cache, config
from hostkv.agent.daemon import Agent
from hostkv.agent.model import History, Record
from hostkv.agent.publish import Publisher, read_current


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


def _start_agent(tmp_path):
    cfg = config.Config(run_dir=str(tmp_path / "run"), state_dir=str(tmp_path / "state"),
                        hooks_dir=str(tmp_path / "hooks"), device=str(tmp_path / "no-such-port"))
    agent = Agent(cfg)
    agent.start()
    agent._shutdown()
    return agent


def test_seq_floor_when_run_dir_is_ahead_of_the_cache(tmp_path):
    """A run dir (agent restart, no reboot) newer than the cache: never reuse its seq."""
    cache.save(str(tmp_path / "state"), rec(3, {"host.hostname": "old"}))
    pub = Publisher(str(tmp_path / "run"))
    pub.prepare()
    pub.publish(rec(5, {"host.hostname": "newer"}))
    agent = _start_agent(tmp_path)
    assert agent.seq == 6
    doc = read_current(str(tmp_path / "run"))
    assert doc["seq"] == 6 and doc["stale"] is True and doc["values"] == {"host.hostname": "old"}
    assert cache.load(str(tmp_path / "state")).seq == 6


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
