"""In a real QEMU guest running our agent (issue 6, items 5 and 6):

* migration ping-pong: >= 20 live migrations between two hostkvds that act as two physical hosts
  (own UTS namespace each, so ``host.hostname`` differs); after each hop the guest reports the
  landing host, and a ``hostkv watch`` loop running in the guest the whole time saw every change,
  in order;
* hostile values (newlines, quotes, $(...), backticks, non-ASCII) set on the host round-trip
  exactly through values.json, keys/ and the sourced env file, and nothing in them is executed.

Raw QEMU (tests/harness/migration.py), TCG here.  One guest for the module.
"""

import json
import time

import pytest

from tests.harness.guest_image import build_guest_image
from tests.harness.guest_reads import guest_status, guest_value
from tests.harness.waiting import wait_for
from tests.harness.hostkvd_proc import HostkvdProcess, uts_prefix
from tests.harness.migration import MigrationPair
from tests.harness.qemu_guest import QemuGuest

pytestmark = pytest.mark.vm

HOPS = 20
NASTY = {
    "host.nasty": "line1\nline2 'single' \"double\" $(touch /tmp/pwned1) `touch /tmp/pwned2` ${PWD} \\ "
                  "\u00fc \u4e2d \U0001f600 \t;|&<>*?[a]\n",
    "host.quote": "'",
    "host.empty-ish": " ",
}
WATCH_LOOP = (
    "s=%d; while :; do out=$(hostkv watch host.hostname --since $s --json --timeout 600) || break; "
    "echo \"$out\" >> /tmp/pingpong.watch; s=$(echo \"$out\" | sed 's/.*\"seq\": \\([0-9]*\\).*/\\1/'); done")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    image = build_guest_image()
    work = tmp_path_factory.mktemp("pingpong")
    socks = {"host-a": str(work / "a.sock"), "host-b": str(work / "b.sock")}
    hosts = {}
    for name, sock in socks.items():
        hosts[name] = HostkvdProcess(str(work / name), channels=[sock], name="hostkvd", host_id="id-" + name,
                                     config_text="[host]\nhost.rack = r-%s\n" % name,
                                     prefix=uts_prefix(name), extra_args=["--log-level", "info"]).start()
    guest = QemuGuest(str(work), socks["host-a"], image=image, hostname="pingpong")
    pair = None
    try:
        guest.start()
        guest.wait_ready(120)
        pair = MigrationPair(guest, socks["host-a"], socks["host-b"])
        yield {"pair": pair, "hosts": hosts, "socks": socks}
    finally:
        (pair.guest if pair else guest).stop(sync=False)
        for h in hosts.values():
            h.stop()


def test_hostile_values_round_trip_exactly_and_run_nothing(world):
    guest, host_a = world["pair"].guest, world["hosts"]["host-a"]
    wait_for(lambda: guest_value(guest, "host.hostname") == "host-a", 30, "first snapshot in the guest")
    reply = host_a.control({"op": "host-set", "values": NASTY})
    assert reply["ok"], reply
    wait_for(lambda: guest_value(guest, "host.nasty") == NASTY["host.nasty"], 15, "the nasty value")
    for key, value in NASTY.items():
        assert guest_value(guest, key) == value                           # keys/<key>: exact bytes
    rc, out, err = guest.exec(["cat", "/run/hostkv/values.json"])
    doc = json.loads(out)
    assert all(doc["values"][k] == v for k, v in NASTY.items())
    for key, value in NASTY.items():                                      # sourced by the guest's sh
        var = "HOSTKV_" + key.upper().replace(".", "_").replace("-", "_")
        rc, out, err = guest.exec('. /run/hostkv/env && printf %%s "$%s"' % var)
        assert (rc, out) == (0, value), (key, rc, out, err)
    rc, out, err = guest.exec("ls /tmp/pwned1 /tmp/pwned2 2>&1; echo rc=$?")
    assert "rc=0" not in out, "sourcing the env file executed something: %s" % out
    reply = host_a.control({"op": "host-unset", "keys": sorted(NASTY)})
    assert reply["ok"], reply
    wait_for(lambda: guest_value(guest, "host.nasty") is None, 15, "the nasty value to go")


def test_migration_ping_pong_lands_on_the_right_host_and_watch_sees_every_change(world):
    pair = world["pair"]
    guest = pair.guest
    wait_for(lambda: guest_value(guest, "host.hostname") == "host-a", 30, "host-a in the guest")
    seq = guest_status(guest)[1]["seq"]
    guest.exec("(%s) </dev/null >/dev/null 2>&1 &" % (WATCH_LOOP % seq))
    time.sleep(0.3)
    settle, expected = [], []
    for hop in range(HOPS):
        result = pair.hop()
        target = "host-b" if pair.side == 1 else "host-a"
        expected.append(target)
        t_resumed = result.resumed_at
        wait_for(lambda: guest_value(pair.guest, "host.hostname") == target, 20,
                 "hop %d: guest reports %s" % (hop, target))
        settle.append(time.monotonic() - t_resumed)
        st = guest_status(pair.guest)[1]
        assert st["host_id"] == "id-" + target and st["connected"] is True, st
        assert guest_value(pair.guest, "host.rack") == "r-" + target
    guest = pair.guest
    time.sleep(0.5)
    wait_for(lambda: guest.exec(["sh", "-c", "wc -l < /tmp/pingpong.watch"])[1].strip() == str(HOPS), 15,
             "the watch to log %d changes" % HOPS)
    rc, out, err = guest.exec(["cat", "/tmp/pingpong.watch"])
    seen = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert [s["value"] for s in seen] == expected, [s["value"] for s in seen]
    seqs = [s["seq"] for s in seen]
    assert seqs == sorted(set(seqs)) and seqs[0] > seq
    durations = [r.completed_s for r in pair.results]
    print("\nping-pong: %d hops, migration %.2f-%.2f s, settle (resume -> guest reports landing host) "
          "median %.2f s max %.2f s; watch saw %d/%d changes in order"
          % (HOPS, min(durations), max(durations), sorted(settle)[len(settle) // 2], max(settle),
             len(seen), HOPS))
