"""Never present old data as current, in a real QEMU guest running our agent (issue 10.2, 10.3a, 12.3).

* A snapshot the host cannot deliver: the real Hostkvd core (tests/hardening/vmkeys_daemon.py: real
  daemon, real channel to QEMU's chardev) serves 250 host.* keys from its config; then 20 vm.* keys
  for this guest put the snapshot over the 256-key limit.  The real HostSession sends
  ``snapshot-undeliverable`` instead; the guest must publish its old values stale with the reason
  (``get --fresh`` exits 5 naming it) until a deliverable snapshot comes, then fresh again.
* Any guest user (uid 65534) can ``hostkv watch`` and ``status`` through the read-only socket but
  not ``get --live`` (exit 6).
* ``kill -9`` of the agent: values.json still says ``stale: false, connected: true``; a non-root
  reader (uid 65534) and a script's non-blocking shared flock both see that no agent runs (``get --fresh``
  exit 5, ``status`` not "connected").

Raw QEMU (tests/harness/qemu_guest.py), TCG here.  One guest for the module.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.harness.guest_image import build_guest_image
from tests.harness.guest_reads import guest_status, guest_value
from tests.harness.hostkvd_proc import PYTHONPATH
from tests.harness.qemu_guest import QemuGuest
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.vm

HERE = os.path.dirname(os.path.abspath(__file__))
HOST_KEYS = 250
AS_NOBODY = ("import os, sys; os.setgroups([]); os.setgid(65534); os.setuid(65534); "
             "os.execvp('hostkv', ['hostkv'] + sys.argv[1:])")


# a script's check as docs/AGENT.md gives it (the guest has no flock(1)), run as uid 65534:
# exit 1 = the lock is held (the agent runs), 0 = no agent
LOCK_CHECK = ("import fcntl, os, sys; os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
              "fd = os.open('/run/hostkv/agent.lock', os.O_RDONLY)\n"
              "try:\n    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)\n"
              "except BlockingIOError:\n    sys.exit(1)\n")


def nobody(guest, *args):
    return guest.exec(["python3", "-c", AS_NOBODY] + list(args), timeout=30)


def lock_check(guest):
    rc, out, err = guest.exec(["python3", "-c", LOCK_CHECK], timeout=30)
    assert rc in (0, 1), (rc, out, err)
    return rc


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    image = build_guest_image()
    work = tmp_path_factory.mktemp("fresh")
    sock = str(work / "g.sock")
    conf = work / "hostkvd.conf"
    conf.write_text("[host]\n" + "".join("host.k%03d = v%d\n" % (i, i) for i in range(HOST_KEYS)))
    guest = QemuGuest(str(work), sock, image=image, hostname="fresh")
    daemon = None
    log = open(str(work / "daemon.log"), "wb")
    try:
        guest.start()
        guest.wait_ready(120)
        daemon = subprocess.Popen([sys.executable, os.path.join(HERE, "vmkeys_daemon.py"),
                                   str(work / "ctl.sock"), str(conf), "g=%s" % sock],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                  env=dict(os.environ, PYTHONPATH=PYTHONPATH))
        assert daemon.stdout.readline().strip() == b"started"

        def set_vm(values):
            daemon.stdin.write(json.dumps({"key": "g", "values": values}).encode() + b"\n")
            daemon.stdin.flush()
            assert daemon.stdout.readline().startswith(b"ok")

        yield {"guest": guest, "set_vm": set_vm, "log": str(work / "daemon.log")}
    finally:
        if daemon is not None:
            daemon.stdin.close()
            try:
                daemon.wait(15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        guest.stop(sync=False)
        log.close()


def _fresh(guest):
    rc, doc = guest_status(guest)
    return doc if doc.get("fresh") else None


def test_an_undeliverable_snapshot_makes_the_guest_data_stale_until_the_next(world):
    guest, set_vm = world["guest"], world["set_vm"]
    wait_for(lambda: guest_value(guest, "host.k249") == "v249" and _fresh(guest), 60, "250 host keys, fresh")
    set_vm({"vm.role": "db"})
    wait_for(lambda: guest_value(guest, "vm.role") == "db", 30, "vm.role in the guest")
    set_vm(dict(("vm.x%02d" % i, "y") for i in range(20)))       # 250 + 20 (+ host's own) > 256
    rc, doc = wait_for(lambda: (lambda r: r if r[1].get("stale") else None)(guest_status(guest)), 30,
                       "the guest to mark its data stale")
    assert "cannot deliver" in doc["stale_reason"] and doc["undeliverable"], doc
    assert doc["connected"] is True and doc["fresh"] is False
    assert guest_value(guest, "vm.role") == "db" and guest_value(guest, "vm.x00") is None   # old, kept
    rc, out, err = guest.exec(["hostkv", "get", "--fresh", "vm.role"])
    assert rc == 5 and "cannot deliver" in err, (rc, err)
    rc, out, err = guest.exec(["cat", "/run/hostkv/values.json"])
    published = json.loads(out)
    assert published["stale"] is True and "cannot deliver" in published["stale_reason"]
    rc, out, err = guest.exec(["hostkv", "status"])
    assert "STALE: the host cannot deliver" in out, out
    log = guest.read_file("/var/log/hostkv-agent.log")
    assert log.count("the host cannot deliver this guest's current values") == 1, log[-2000:]
    set_vm({"vm.role": "web"})
    wait_for(lambda: guest_value(guest, "vm.role") == "web" and _fresh(guest), 30, "fresh again")
    rc, out, err = guest.exec(["hostkv", "get", "--fresh", "vm.role"])
    assert (rc, out) == (0, "web"), (rc, err)


def test_any_user_can_watch_but_not_reach_the_host(world):
    guest = world["guest"]
    wait_for(lambda: _fresh(guest), 30, "fresh data")
    rc, out, err = nobody(guest, "watch", "--since", "0", "--json")
    assert rc == 0 and json.loads(out)["fresh"] is True, (rc, err)
    rc, out, err = nobody(guest, "status", "--json")
    assert rc == 0 and json.loads(out)["connected"] is True and "stats" in json.loads(out), (rc, err)
    rc, out, err = nobody(guest, "get", "--live", "vm.role")
    assert rc == 6 and "permission denied" in err, (rc, err)


def test_after_kill_9_no_reader_trusts_the_agents_last_words(world):
    guest = world["guest"]
    rc, doc = guest_status(guest)
    assert doc["fresh"] and doc["pid"], doc
    assert lock_check(guest) == 1                           # held: the agent runs
    guest.exec(["touch", "/run/hostkv-test/no-respawn"])    # the init's respawn loop ends with it
    guest.exec(["kill", "-9", str(doc["pid"])])
    wait_for(lambda: guest.exec(["kill", "-0", str(doc["pid"])])[0] != 0, 15, "the agent to die")
    rc, out, err = guest.exec(["cat", "/run/hostkv/values.json"])
    published = json.loads(out)
    assert published["stale"] is False and published["connected"] is True    # its last words
    rc, out, err = nobody(guest, "get", "--fresh", "vm.role")
    assert rc == 5 and "the agent is not running" in err, (rc, out, err)
    rc, out, err = nobody(guest, "status")
    assert rc == 3 and "connected:  no (the agent is not running)" in out and "connected:  yes" not in out, out
    assert lock_check(guest) == 0                           # nobody holds it: a script sees it too
