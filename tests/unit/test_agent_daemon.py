"""The agent's poll loop against a real HostSession over a fake port (fast unit test).

See test_agent_support.py for how the fake port reproduces the measured virtio-serial
semantics.  The agent runs in a thread of the test process with temp dirs for everything.
"""

import os
import stat
import threading
import time

import pytest

from hostkv.agent import cache

from test_agent_support import Rig, wait_for


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.stop()


def cached_seq(rig, seq):
    """The cached Record once the cache holds ``seq`` (it is written right after publishing)."""
    try:
        cached = cache.load(rig.state_dir)
    except cache.CacheError:
        return None
    return cached if cached is not None and cached.seq == seq else None


def connected_rig(rig):
    rig.start()
    rig.host.connect()
    return rig.wait_published(lambda d: d["connected"] and not d["stale"], "first snapshot")


def test_first_snapshot_is_published_cached_and_hooked(rig):
    hook_out = rig.add_hook()
    doc = connected_rig(rig)
    assert doc["seq"] == 1 and doc["host_id"] == "hv1"
    assert doc["values"] == {"host.hostname": "hv1.example", "vm.role": "db"}
    with open(os.path.join(rig.run_dir, "keys", "host.hostname"), "rb") as f:
        assert f.read() == b"hv1.example"
    with open(os.path.join(rig.run_dir, "env")) as f:
        assert "HOSTKV_HOST_HOSTNAME='hv1.example'\n" in f.read()
    cached = wait_for(lambda: cached_seq(rig, 1), what="the cache (written right after publishing)")
    assert cached.seq == 1 and cached.values == doc["values"]
    wait_for(lambda: hook_out.exists() and hook_out.read_text(), what="hook output")
    assert hook_out.read_text() == "1|host.hostname vm.role|1|hv1\n"
    # the agent said hello and synced
    assert rig.host.ops("hello")[0]["versions"] == [1]
    assert rig.host.ops("sync")
    sock_mode = stat.S_IMODE(os.stat(rig.agent.cfg.socket).st_mode)
    assert sock_mode == 0o600


def test_unasked_push_change_and_removal(rig):
    hook_out = rig.add_hook()
    connected_rig(rig)
    rig.host.set(values={"host.hostname": "hv1.example", "vm.role": "web", "vm.new": "x"})
    doc = rig.wait_published(lambda d: d["seq"] == 2, "seq 2")
    assert doc["values"]["vm.role"] == "web"
    rig.host.set(values={"host.hostname": "hv1.example"})
    doc = rig.wait_published(lambda d: d["seq"] == 3, "seq 3")
    assert sorted(os.listdir(os.path.join(rig.run_dir, "keys"))) == ["host.hostname"]
    wait_for(lambda: hook_out.exists() and "\n3|" in hook_out.read_text(), what="hooks up to seq 3")
    lines = hook_out.read_text().splitlines()
    assert lines[0] == "1|host.hostname vm.role|1|hv1"
    # hooks run one publication at a time or merged, never losing a changed key
    rest = " ".join(l.split("|")[1] for l in lines[1:])
    assert {"vm.role", "vm.new"} <= set(rest.split())
    assert lines[-1].startswith("3|") and lines[-1].endswith("|0|hv1")
    # a push with identical data (only the generation moved) keeps seq
    rig.host.set()
    time.sleep(0.2)
    assert rig.published()["seq"] == 3


def test_migration_without_edge_new_host_pushes(rig):
    hook_out = rig.add_hook()
    connected_rig(rig)
    wait_for(lambda: hook_out.exists(), what="first hook")
    rig.host.set(host_id="hv2", values={"host.hostname": "hv2.example", "vm.role": "db"})
    doc = rig.wait_published(lambda d: d["host_id"] == "hv2", "host change")
    assert doc["seq"] == 2 and doc["values"]["host.hostname"] == "hv2.example"
    assert rig.agent.stats["disconnects"] == 0
    wait_for(lambda: "2|host.hostname|1|hv2" in hook_out.read_text(), what="host-changed hook")


def test_disconnect_marks_stale_reconnect_resyncs(rig):
    connected_rig(rig)
    rig.host.disconnect()
    doc = rig.wait_published(lambda d: not d["connected"], "disconnect")
    assert doc["stale"] is True and doc["seq"] == 1
    assert rig.ask({"op": "status"})["state"] == "disconnected"
    # while away the host data changes; the reconnect brings it
    rig.host.set(values={"host.hostname": "hv1.example", "vm.role": "cache"}, push=False)
    t0 = time.time()
    rig.host.connect()
    doc = rig.wait_published(lambda d: d["connected"] and not d["stale"], "reconnect")
    assert time.time() - t0 < 2.5         # backoff is capped at 1 s
    assert doc["seq"] == 2 and doc["values"]["vm.role"] == "cache"
    assert rig.agent.stats["connects"] == 2


def test_host_absent_the_agent_sleeps_until_the_kernel_reports_the_connect(rig):
    """A port that wakes its waiter on every edge (a virtio port, port.py) is never probed on a
    timer: while the host is away the agent sleeps without a timeout, and the connect reaches it
    at once."""
    rig.start()
    time.sleep(0.3)
    probes, wakeups = rig.link.probes, rig.agent.wakeups
    time.sleep(2.0)
    assert rig.link.probes == probes and probes <= 2, (probes, rig.link.probes)
    assert rig.agent.wakeups == wakeups, "the agent woke up with nothing to do"
    assert rig.published() is None
    status = rig.ask({"op": "status"})
    assert status["state"] == "disconnected" and status["published"] is False
    assert status["link"] == "disconnected"
    t0 = time.time()
    rig.host.connect()
    rig.wait_published(lambda d: d["connected"], "late host", timeout=3)
    assert time.time() - t0 < 1.0          # no backoff: the edge wakes the agent
    # connected and quiet: no wakeups either (nothing is timed but the 300 s re-sync)
    wakeups = rig.agent.wakeups
    time.sleep(1.0)
    assert rig.agent.wakeups == wakeups


def test_a_port_that_does_not_wake_is_probed_with_backoff(tmp_path):
    """The fallback (a device that is not a virtio port): probe 50 ms doubling to 1 s."""
    rig = Rig(tmp_path, wakes=False)
    try:
        rig.start()
        time.sleep(2.0)
        probes = rig.link.probes
        # 50 ms doubling to 1 s: about 6 probes in 2 s; a busy loop would make thousands
        assert 3 <= probes <= 12, probes
        assert rig.published() is None
        rig.host.connect()
        rig.wait_published(lambda d: d["connected"], "late host", timeout=3)
        rig.host.set(values={"host.hostname": "moved"})
        rig.wait_published(lambda d: d["values"]["host.hostname"] == "moved", "push over a level port")
        rig.host.disconnect()
        rig.wait_published(lambda d: not d["connected"], "disconnect on a level port")
        rig.host.connect()
        rig.wait_published(lambda d: d["connected"] and not d["stale"], "reconnect", timeout=3)
    finally:
        rig.stop()


def test_half_frame_and_garbage_are_discarded_then_resynced(rig):
    connected_rig(rig)
    # half a snapshot frame (as left by a reconnect), then garbage, then a real change
    rig.host.send(b'{"op":"snapshot","v":1,"host_id":"evil","generation":9,"val')
    rig.host.send(b'\nnot json at all\n{"op":"snapshot","host_id":"","generation":-1,"values":{}}\n')
    rig.host.set(values={"host.hostname": "hv1.example", "vm.role": "after-garbage"})
    doc = rig.wait_published(lambda d: d["values"].get("vm.role") == "after-garbage", "resynced data")
    assert doc["host_id"] == "hv1"
    assert rig.agent.stats["discarded"] >= 1
    assert len(rig.host.ops("sync")) >= 2      # a resync was started after the garbage


def test_unanswered_sync_is_restarted(rig):
    rig.host.answer = False
    rig.start()
    rig.host.connect()
    wait_for(lambda: len(rig.host.ops("sync")) >= 3, timeout=5, what="repeated syncs")
    tokens = [f["token"] for f in rig.host.ops("sync")]
    assert len(set(tokens)) == len(tokens)
    rig.host.answer = True
    rig.host.push()        # nothing is accepted until a sync reply arrives ...
    time.sleep(0.2)
    assert rig.published() is None
    doc = rig.wait_published(lambda d: d["seq"] == 1, "data after the host woke up", timeout=5)
    assert doc["connected"]


def test_hot_unplug_and_replug(rig):
    connected_rig(rig)
    rig.link.unplug()
    wait_for(lambda: rig.ask({"op": "status"})["state"] == "waiting-for-port", what="unplug seen")
    assert rig.published()["connected"] is False
    rig.link.replug()
    rig.host.connect()
    rig.wait_published(lambda d: d["connected"] and not d["stale"], "replugged", timeout=5)
    assert rig.agent.stats["connects"] == 2


def test_restart_publishes_cache_as_stale_and_keeps_seq(rig):
    connected_rig(rig)
    rig.host.set(values={"host.hostname": "hv1.example", "vm.role": "v2"})
    rig.wait_published(lambda d: d["seq"] == 2, "seq 2")
    rig.stop()
    rig.host.disconnect()
    # a reboot: /run is empty, only the cache survives
    from hostkv.agent.publish import rmtree
    rmtree(rig.run_dir)
    hook_out = rig.add_hook()
    rig.start()
    doc = rig.wait_published(lambda d: True, "cache published")
    assert doc["seq"] == 2 and doc["stale"] is True and doc["connected"] is False
    assert doc["values"]["vm.role"] == "v2"
    assert rig.ask({"op": "status"})["stale"] is True
    # the host confirms the same data: same seq, fresh now
    rig.host.connect()
    doc = rig.wait_published(lambda d: not d["stale"], "confirmed")
    assert doc["seq"] == 2
    # hooks ran once for this agent start although nothing changed (HOSTKV_REASON=start)
    wait_for(lambda: os.path.exists(str(hook_out) + ".reason"), what="start hook")
    assert hook_out.read_text() == "2||0|hv1\n"
    with open(str(hook_out) + ".reason") as f:
        assert f.read() == "start\n"
    # then new data: seq continues from the cache, never backwards
    rig.host.set(values={"host.hostname": "hv1.example", "vm.role": "v3"})
    assert rig.wait_published(lambda d: d["seq"] == 3, "seq 3")["values"]["vm.role"] == "v3"


def test_corrupt_cache_is_ignored_with_a_warning(rig):
    os.makedirs(rig.state_dir)
    with open(os.path.join(rig.state_dir, "snapshot.json"), "w") as f:
        f.write("{not json")
    doc = connected_rig(rig)
    assert doc["seq"] == 1
    wait_for(lambda: cached_seq(rig, 1), what="the cache rewritten")


def test_watch_since_and_key_semantics(rig):
    connected_rig(rig)
    results = {}

    def watch(name, req):
        results[name] = rig.ask(dict(req, op="watch"))

    threads = [threading.Thread(target=watch, args=("any", {"since": 1})),
               threading.Thread(target=watch, args=("role", {"since": 1, "key": "vm.role"})),
               threading.Thread(target=watch, args=("hostname", {"since": 1, "key": "host.hostname",
                                                                 "timeout": 1.0}))]
    for t in threads:
        t.start()
    wait_for(lambda: len(rig.agent.watchers) == 3, what="3 watchers")
    rig.host.set(values={"host.hostname": "hv1.example", "vm.role": "db", "vm.other": "1"})
    wait_for(lambda: "any" in results, what="any-change watch")
    assert results["any"]["seq"] == 2 and results["any"]["snapshot"]["values"]["vm.other"] == "1"
    assert "role" not in results           # vm.role did not change
    rig.host.set(values={"host.hostname": "hv1.example", "vm.role": "web"})
    for t in threads:
        t.join(5)
    assert results["role"]["ok"] and results["role"]["seq"] == 3 and results["role"]["value"] == "web"
    assert results["hostname"] == {"ok": False, "error": "timeout", "seq": 3, "since": 1,
                                   "message": "no change within the timeout"}
    # a token from the past is answered at once when the key changed since then ...
    r = rig.ask({"op": "watch", "since": 1, "key": "vm.role"})
    assert r["ok"] and r["value"] == "web" and r["seq"] == 3
    # ... and a key that went A -> B -> A counts as unchanged
    rig.host.set(values={"host.hostname": "hv1.example", "vm.role": "db"})
    rig.wait_published(lambda d: d["seq"] == 4, "seq 4")
    assert rig.ask({"op": "watch", "since": 1, "key": "vm.role", "timeout": 0.2})["error"] == "timeout"
    # a removed key reports present=false
    rig.host.set(values={"host.hostname": "hv1.example"})
    r = rig.ask({"op": "watch", "since": 4, "key": "vm.role"})
    assert r["ok"] and r["present"] is False and r["value"] is None and r["seq"] == 5
    # bad requests are refused clearly
    assert rig.ask({"op": "watch", "since": -1})["error"] == "bad-request"
    assert rig.ask({"op": "watch", "key": "nope"})["error"] == "bad-key"
    assert rig.ask({"op": "frobnicate"})["error"] == "unknown-op"


def test_live_get_round_trip(rig):
    connected_rig(rig)
    r = rig.ask({"op": "get", "key": "host.hostname", "live": True})
    assert r["ok"] and r["value"] == "hv1.example" and r["host_id"] == "hv1" and r["rtt"] < 1.0
    assert rig.ask({"op": "get", "key": "host.missing", "live": True})["error"] == "not-found"
    assert rig.ask({"op": "get", "key": "host.hostname"})["value"] == "hv1.example"
    # the host changed its data without pushing: the live get sees it, the files do not yet
    rig.host.set(values={"host.hostname": "moved"}, push=False)
    assert rig.ask({"op": "get", "key": "host.hostname", "live": True})["value"] == "moved"
    assert rig.published()["values"]["host.hostname"] == "hv1.example"
    rig.host.disconnect()
    rig.wait_published(lambda d: not d["connected"], "disconnect")
    assert rig.ask({"op": "get", "key": "host.hostname", "live": True})["error"] == "not-connected"


def test_live_get_times_out_when_host_is_wedged(rig):
    connected_rig(rig)
    rig.host.answer = False
    t0 = time.time()
    r = rig.ask({"op": "get", "key": "host.hostname", "live": True, "timeout": 0.3})
    assert r["error"] == "timeout" and time.time() - t0 < 2


def test_hook_timeout_does_not_block_the_loop(rig):
    rig.cfg_kw["hook_timeout"] = 0.5
    path = os.path.join(rig.hooks_dir, "00-slow")
    with open(path, "w") as f:
        f.write("#!/bin/sh\nsleep 30\n")
    os.chmod(path, 0o755)
    skipped = os.path.join(rig.hooks_dir, "20-old.rpmsave")
    with open(skipped, "w") as f:
        f.write("#!/bin/sh\ntouch %s/ran\n" % rig.tmp)
    os.chmod(skipped, 0o755)
    hook_out = rig.add_hook("10-record")
    connected_rig(rig)
    rig.host.set(values={"host.hostname": "x"})
    # publication is not delayed by the sleeping hook
    rig.wait_published(lambda d: d["seq"] == 2, "seq 2 while hook sleeps", timeout=1.0)
    wait_for(lambda: hook_out.exists() and "2|" in hook_out.read_text(), timeout=5, what="hooks after timeout")
    assert not os.path.exists(os.path.join(str(rig.tmp), "ran"))


def test_graceful_stop_marks_data_stale(rig):
    connected_rig(rig)
    rig.stop()
    doc = rig.published()
    assert doc["stale"] is True and doc["connected"] is False
    assert not os.path.exists(os.path.join(rig.run_dir, "agent.sock"))


def test_host_answering_every_sync_with_bad_data_does_not_make_us_spin(rig):
    """300 keys break the 256-key limit: every snapshot is refused and a resync started;
    the agent backs off instead of ping-ponging syncs with the host at full speed."""
    from test_agent_support import UncheckedHostSession
    rig.host.snapshot = rig.host.snapshot.__class__(
        "hv1", 1, dict(("host.k%d" % i, "v") for i in range(300)))
    rig.host.session = UncheckedHostSession(lambda: rig.host.snapshot)  # hostkvd refuses such data
    rig.start()
    rig.host.connect()
    time.sleep(2.0)
    syncs = len(rig.host.ops("sync"))
    assert 2 <= syncs <= 12, syncs
    assert rig.published() is None
    assert rig.ask({"op": "status"})["connected"] is True
    # the host fixes its data: the agent recovers on its own (next held-back sync, <= 5 s)
    rig.host.set(values={"host.hostname": "fixed"}, push=False)
    doc = rig.wait_published(lambda d: True, "recovery", timeout=8)
    assert doc["values"] == {"host.hostname": "fixed"}


def test_a_burst_of_snapshots_is_published_once_with_the_last_one(rig):
    connected_rig(rig)
    frames = []
    for i in range(200):
        rig.host.set(values={"host.hostname": "burst-%d" % i}, push=False)
        rig.host.session.push()
        frames.append(rig.host.session.data_to_send())
    rig.host.send(b"".join(frames))
    doc = rig.wait_published(lambda d: d["values"]["host.hostname"] == "burst-199", "last of the burst")
    assert doc["seq"] < 20            # coalesced: not 200 publications
    assert rig.agent.stats["snapshots"] < 200
