"""hostkv end to end in a real QEMU guest (TCG here, KVM on a real host): our agent in the guest,
the real hostkvd on the "host", talking over a real virtio-serial port.

Each simulated physical host is a hostkvd in its own UTS namespace, so ``host.hostname`` is that
host's real kernel host name.  The tests in this module share one guest and run in file order;
each states what it starts from.
"""
import os
import time

import pytest

from tests.core.conftest import start_host
from tests.harness.guest_reads import guest_status, guest_value, wait_guest_value
from tests.harness.waiting import wait_for
from tests.harness.migration import make_destination, migrate
from tests.harness.qemu_guest import QemuGuest

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def world(tmp_path_factory, image):
    work = tmp_path_factory.mktemp("core")
    sock_a, sock_b = str(work / "a.sock"), str(work / "b.sock")
    host_a = start_host(work, "host-a", [sock_a])
    guest = QemuGuest(str(work), sock_a, image=image, hostname="guest1")
    guest.start()
    guest.wait_ready(90)
    state = {"work": work, "sock": {"host-a": sock_a, "host-b": sock_b}, "hosts": {"host-a": host_a},
             "guest": guest}
    yield state
    state["guest"].stop(sync=False)
    for h in state["hosts"].values():
        h.stop()


def test_round_trip_get_and_files(world):
    guest = world["guest"]
    wait_guest_value(guest, "host.hostname", "host-a")
    rc, out, err = guest.exec(["hostkv", "get", "host.hostname"])
    assert (rc, out) == (0, "host-a"), err
    rc, out, err = guest.exec(["hostkv", "get", "--live", "host.rack"])
    assert (rc, out) == (0, "r-host-a"), err
    assert guest_value(guest, "host.fqdn") == "host-a"
    rc, out, err = guest.exec(["hostkv", "get", "host.nope"])
    assert rc == 1
    rc, status = guest_status(guest)
    assert rc == 0 and status["connected"] is True and status["stale"] is False
    assert status["host_id"] == "id-host-a"
    rc, out, err = guest.exec(". /run/hostkv/env && printf %s \"$HOSTKV_HOST_HOSTNAME\"")
    assert out == "host-a"


def test_push_reaches_files_and_a_running_watch(world):
    guest, host_a = world["guest"], world["hosts"]["host-a"]
    rc, out, err = guest.exec(["hostkv", "status", "--json"])
    seq = __import__("json").loads(out)["seq"]
    guest.exec("(hostkv watch host.rack --since %d --timeout 60 > /tmp/watch.out 2>&1; "
               "echo $? > /tmp/watch.rc) </dev/null >/dev/null 2>&1 &" % seq)
    time.sleep(0.5)
    odd = "r2 $(reboot) `id` 'q'"
    with open(host_a.config_path, "w") as f:
        f.write("[host]\nhost.rack = %s\n" % odd)
    host_a.sighup()
    wait_guest_value(guest, "host.rack", odd, timeout=10)
    wait_for(lambda: guest.exec(["cat", "/tmp/watch.rc"])[1].strip() == "0", 10, "watch to return 0")
    rc, out, err = guest.exec(["cat", "/tmp/watch.out"])
    new_seq, value = out.split("\n", 1)
    assert int(new_seq) > seq and value == odd
    rc, out, err = guest.exec(". /run/hostkv/env && printf %s \"$HOSTKV_HOST_RACK\"")
    assert out == odd
    with open(host_a.config_path, "w") as f:         # back to the module's starting point
        f.write("[host]\nhost.rack = r-host-a\n")
    host_a.sighup()
    wait_guest_value(guest, "host.rack", "r-host-a", timeout=10)


def _migrate_to(world, target, connect_first):
    """Live-migrate the guest to host ``target``; its hostkvd connected before or started after."""
    src = world["guest"]
    sock = world["sock"][target]
    if os.path.exists(sock):
        os.unlink(sock)
    dst = make_destination(src, sock)
    dst.start()
    host = world["hosts"].get(target)
    if connect_first:
        if host is None or host.proc.poll() is not None:
            host = world["hosts"][target] = start_host(world["work"], target, [sock])
        host.wait_log("connected to %s" % sock, timeout=20, after=0)
    else:
        if host is not None:
            host.stop()
            world["hosts"].pop(target)
    result = migrate(src, dst)
    world["guest"] = dst
    if not connect_first:
        host = world["hosts"][target] = start_host(world["work"], target, [sock])
    return dst, result


@pytest.mark.parametrize("connect_first", [True, False], ids=["dest-hostkvd-connected-before",
                                                              "dest-hostkvd-started-after"])
def test_live_migration_a_b_a_reports_the_landing_host(world, connect_first):
    for target, previous in (("host-b", "host-a"), ("host-a", "host-b")):
        guest, result = _migrate_to(world, target, connect_first)
        wait_guest_value(guest, "host.hostname", target, timeout=15)
        # settled: it stays on the landing host's values, never the previous host's
        for _ in range(5):
            assert guest_value(guest, "host.hostname") == target
            assert guest_value(guest, "host.rack") == "r-" + target
        rc, status = guest_status(guest)
        assert status["host_id"] == "id-" + target and status["connected"] is True
        print("\nmigration %s -> %s (%s): %r" % (previous, target, connect_first, result))


def test_hostkvd_killed_and_restarted_guest_resyncs(world):
    guest = world["guest"]
    target = "host-a" if guest_value(guest, "host.hostname") == "host-a" else "host-b"
    host = world["hosts"].pop(target)
    host.kill9()
    wait_for(lambda: guest_status(guest)[1]["connected"] is False, 15, "the agent to see the host gone")
    assert guest_value(guest, "host.hostname") == target       # last values stay published
    host = world["hosts"][target] = start_host(world["work"], target, [world["sock"][target]],
                                               config_text="[host]\nhost.rack = restarted\n")
    wait_guest_value(guest, "host.rack", "restarted", timeout=15)
    assert guest_status(guest)[1]["connected"] is True


def test_hostkvd_absent_at_boot_then_started_and_cache_is_stale_after_reboot(tmp_path, image):
    sock = str(tmp_path / "late.sock")
    guest = QemuGuest(str(tmp_path), sock, image=image, name="late", hostname="guest2")
    host = None
    try:
        guest.start()
        guest.wait_ready(90)
        rc, out, err = guest.exec(["hostkv", "get", "host.hostname"])
        assert rc == 3, (rc, out, err)                           # nothing yet: exit 3
        time.sleep(1.0)                                          # the agent waits; nothing crashes
        host = start_host(tmp_path, "host-late", [sock])
        wait_guest_value(guest, "host.hostname", "host-late", timeout=15)
        host.stop()
        guest.stop()                                             # the state disk is kept: a reboot
        guest = QemuGuest(str(tmp_path), sock, image=image, name="late2", hostname="guest2",
                          state_disk=guest.state_disk)
        guest.start()
        guest.wait_ready(90)
        wait_for(lambda: guest_value(guest, "host.hostname") == "host-late", 20, "cached value")
        rc, status = guest_status(guest)
        assert status["stale"] is True and status["connected"] is False
        rc, out, err = guest.exec(["hostkv", "get", "--fresh", "host.hostname"])
        assert rc == 5 and out == ""
        rc, out, err = guest.exec(["hostkv", "get", "host.hostname"])
        assert rc == 0 and out == "host-late"
        host = start_host(tmp_path, "host-late", [sock], config_text="[host]\n")
        wait_for(lambda: guest_status(guest)[1]["stale"] is False, 15, "fresh values")
        rc, out, err = guest.exec(["hostkv", "get", "--fresh", "host.hostname"])
        assert (rc, out) == (0, "host-late")
    finally:
        guest.stop(sync=False)
        if host is not None:
            host.stop()
