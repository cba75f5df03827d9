"""Faults (issue 6, item 4): kill -9 of hostkvd mid-push and mid-write, SIGHUP storms, bad configs.

All against the real hostkvd process; guests are FakePorts (tests/hardening/ports.py).
Figures printed: restart-to-snapshot delays, kill cycles survived, configs checked.
"""

import glob
import os
import random
import threading
import time

from hostkv.common import atomic
from hostkv.hostkvctl import control_client
from hostkv.hostkvd import config
from tests.hardening.ports import PortSet
from tests.harness.hostkvd_proc import HostkvdProcess

GUESTS = 20
RESERVE_BOUND_S = 1.0
KEEP = "# operator's comment: keep me\n"


def conf_text(storm):
    return "%s[daemon]\npublish_hostname = yes\n[host]\nhost.rack = r12\nhost.storm = %s\n" % (KEEP, storm)


def test_kill9_during_sighup_storm_then_every_guest_is_reserved_within_1s(tmp_path):
    rng = random.Random(6)
    ports = PortSet(tmp_path, GUESTS)
    d = HostkvdProcess(tmp_path, channels=ports.paths, host_id="fault-host", config_text=conf_text("s0"),
                       extra_args=["--log-level", "info"])
    delays = []
    try:
        d.start()
        ports.wait_snapshots(10)
        for cycle in range(4):
            kill_at = rng.randint(5, 25)
            pushed = 0
            for k in range(30):
                value = "c%d-%d" % (cycle, k)
                atomic.write_atomic(d.config_path, conf_text(value))
                d.sighup()
                if k == kill_at:
                    d.kill9()              # pushes to 20 guests are in flight right now
                    last = value
                    break
                time.sleep(0.01)
                pushed += sum(1 for fs in ports.drain(0).values() for f in fs if f["op"] == "snapshot")
            assert pushed > 0, "the SIGHUP storm pushed nothing before the kill"
            ports.drain(0.05)               # EOF from the dead daemon
            ports.drop_all()
            t0, wall0 = time.monotonic(), time.time()
            d.start()
            got = ports.wait_snapshots(5)
            cycle_delays = [t - t0 for t, _ in got.values()]
            delays += cycle_delays
            assert max(cycle_delays) <= RESERVE_BOUND_S, sorted(cycle_delays)
            for _, frame in got.values():     # the restarted daemon serves the last config written
                assert frame["values"]["host.storm"] == last and frame["values"]["host.rack"] == "r12"
                assert frame["generation"] >= int(wall0 * 1000)      # from the new daemon
        print("restart -> snapshot on %d guests x 4 kills: max %.3f s, median %.3f s"
              % (GUESTS, max(delays), sorted(delays)[len(delays) // 2]))
    finally:
        d.stop()
        ports.close()


def test_config_never_half_written_under_kill9_during_host_set_storms(tmp_path):
    rng = random.Random(7)
    big = "x" * 3000
    (tmp_path / "none").mkdir()        # explicit source with no guests (else it follows libvirt)
    d = HostkvdProcess(tmp_path, channel_dirs=[tmp_path / "none"], host_id="cfg-host",
                       config_text=KEEP + "[host]\nhost.counter = start\n",
                       extra_args=["--log-level", "info"])
    checked = writes_acked = 0
    previous = "start"
    try:
        for cycle in range(10):
            d.start()
            sent, acked = [], []
            stop = threading.Event()

            def storm():
                i = 0
                while not stop.is_set():
                    value = "%d-%d" % (cycle, i)
                    sent.append(value)
                    try:
                        reply = d.control({"op": "host-set", "values": {
                            "host.counter": value, "host.big": big + value}}, timeout=2)
                    except (OSError, ValueError, control_client.DaemonUnreachable):
                        return
                    if reply.get("ok"):
                        acked.append(value)
                    i += 1
            t = threading.Thread(target=storm)
            t.start()
            time.sleep(rng.uniform(0.05, 0.4))
            d.kill9()
            stop.set()
            t.join(10)
            cfg = config.load(d.config_path)            # always parses
            text = open(d.config_path, encoding="utf-8").read()
            assert text.startswith(KEEP)
            counter = cfg.host_values["host.counter"]
            assert counter == previous or counter in sent, counter
            if counter != previous:                     # both keys come from the same write
                assert cfg.host_values["host.big"] == big + counter
            if acked:                                   # nothing acknowledged was lost
                assert counter in sent and sent.index(counter) >= sent.index(acked[-1]), (counter, acked[-1])
            assert len(acked) >= 1, "no host-set succeeded before the kill"
            writes_acked += len(acked)
            previous = counter
            checked += 1
        leftovers = glob.glob(os.path.join(str(tmp_path), ".hostkvd.conf.*"))
        print("config: %d kill -9 cycles, %d acknowledged writes, never half-written; %d temp files left"
              % (checked, writes_acked, len(leftovers)))
        # a kill between mkstemp and rename leaves a temp file; the next edit removes it
        assert len(leftovers) <= 1, leftovers
    finally:
        d.stop()


def test_malformed_config_on_sighup_is_refused_with_its_line_and_values_stay(tmp_path):
    ports = PortSet(tmp_path, 1)
    d = HostkvdProcess(tmp_path, channels=ports.paths, host_id="h", config_text=conf_text("good"))
    try:
        d.start()
        (_, first), = ports.wait_snapshots(5).values()
        assert first["values"]["host.storm"] == "good"
        before = d.control({"op": "status"})["status"]["host_values"]
        broken = conf_text("new") + "host.rack = r13\n"              # line 7 sets host.rack twice
        for bad, line in ((broken, 7), (conf_text("new").replace("[host]", "[hosts]"), 4),
                          (conf_text("new") + 'host.q = "unterminated\n', 7)):
            atomic.write_atomic(d.config_path, bad)
            mark = d.log_size()
            d.sighup()
            d.wait_log("hostkvd.conf:%d:" % line, after=mark)
            assert "keeping the running one" in d.log()[mark:]
            reply = d.control({"op": "reload"})
            assert reply["ok"] is False and "hostkvd.conf:%d:" % line in reply["error"], reply
            assert d.control({"op": "status"})["status"]["host_values"] == before
            assert not ports.drain(0.3), "a refused config must not push anything"
            ports.ports[0].send({"op": "get", "id": 1, "key": "host.storm"})
            reply = ports.ports[0].frame(timeout=5)
            assert reply["value"] == "good" and reply["generation"] == first["generation"]
        atomic.write_atomic(d.config_path, conf_text("fixed"))
        d.sighup()
        assert ports.ports[0].frame_where(lambda f: f["op"] == "snapshot")["values"]["host.storm"] == "fixed"
    finally:
        d.stop()
        ports.close()


INJECT_BUG = r"""
import sys
from hostkv import protocol
_receive = protocol.HostSession.receive
def receive(self, data):
    if b"boom" in data:
        raise RuntimeError("injected bug")
    return _receive(self, data)
protocol.HostSession.receive = receive
from hostkv.hostkvd.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_an_internal_error_in_one_channel_is_logged_and_that_guest_is_served_again(tmp_path):
    """Regression: an exception escaping the frame handling (the lone-surrogate id did that) ended
    the channel's task silently: that guest was never reconnected and status still said connected."""
    ports = PortSet(tmp_path, 2)
    d = HostkvdProcess(tmp_path, channels=ports.paths, host_id="h")
    assert d.argv[1:3] == ["-m", "hostkv.hostkvd"]
    d.argv[1:3] = ["-c", INJECT_BUG]
    try:
        d.start()
        ports.wait_snapshots(5)
        ports.ports[0].send(b'{"op":"ping","id":"boom"}\n')
        d.wait_log("internal error while serving the channel; reconnecting")
        assert "RuntimeError: injected bug" in d.log()
        ports.drain(0.1)
        t0 = time.monotonic()
        (t, frame), = ports.wait_snapshots(5, want=[0]).values()
        assert 0.8 <= t - t0 <= 3.0                      # after the 1 s penalty
        ports.ports[1].send({"op": "ping", "id": 7})      # the other guest never noticed
        assert ports.ports[1].frame_where(lambda f: f["op"] == "pong") == {"op": "pong", "id": 7}
        status = {c["label"]: c for c in d.control({"op": "status"})["status"]["channels"]}
        assert status["g00.sock"]["refused"] == 1 and status["g00.sock"]["connects"] == 2
    finally:
        d.stop()
        ports.close()


def test_a_config_edit_removes_temp_files_of_a_killed_edit_only(tmp_path):
    path = tmp_path / "hostkvd.conf"
    path.write_text("[host]\nhost.a = 1\n")
    stale = tmp_path / ".hostkvd.conf.abcd1234"          # what mkstemp left when the writer died
    stale.write_text("[host]\nhost.a = half")
    others = [tmp_path / ".hostkvd.conf.swp", tmp_path / ".other.conf.abcd1234", tmp_path / "notes"]
    for p in others:
        p.write_text("x")
    config.update_host_keys(str(path), {"host.b": "2"})
    assert not stale.exists() and all(p.exists() for p in others)
    assert config.load(str(path)).host_values == {"host.a": "1", "host.b": "2"}
