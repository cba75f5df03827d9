"""`rpm -U` to a newer hostkv-agent build and `rpm -e`, in the running real-OS guest.

The newer build is release 2 of the same sources (`make rpms RELEASE=2`), copied in over the test
exec channel.  `--nodeps` for the same reason as in the kickstart (python3 and /bin/sh are
dpkg's): it is the only option added to what an admin types.
"""
import base64

import pytest

from tests.harness import libvirt_hosts as lh

pytestmark = [pytest.mark.real_os, pytest.mark.libvirt, pytest.mark.vm]

# Runs in the guest (a transient systemd unit) during the upgrade: every ~2 ms, is there a
# complete values.json?  Counts the checks and every instant it was missing or unreadable.
WATCHER = r"""
import json, os, time
checks = misses = 0
examples = []
while not os.path.exists("/run/hostkv-test/stop-watch"):
    try:
        with open("/run/hostkv/values.json") as f:
            json.load(f)["values"]["host.hostname"]
    except (OSError, ValueError, KeyError) as err:
        misses += 1
        examples = (examples + [repr(err)])[-5:]
    checks += 1
    if checks == 20:
        open("/run/hostkv-test/watching", "w").close()
    time.sleep(0.002)
with open("/run/hostkv-test/watch.json.tmp", "w") as f:
    json.dump({"checks": checks, "misses": misses, "examples": examples}, f)
os.rename("/run/hostkv-test/watch.json.tmp", "/run/hostkv-test/watch.json")
"""


@pytest.fixture(scope="module")
def release2(tmp_path_factory):
    from tests.cobbler.cobbler_setup import make_rpms
    return make_rpms(str(tmp_path_factory.mktemp("realos-dist2")), release="2")


def put_file(guest, path, data):
    guest.exec.run(sh="base64 -d > %s" % path, stdin=base64.b64encode(data).decode(), check=True,
                   timeout=60)


def test_upgrade_restarts_the_agent_values_stay_published_erase_removes_it(realos_hosts, realos_guests,
                                                                            realos_install, release2):
    a = realos_hosts["a"]
    g = realos_guests.start(a, "ro-upgrade")
    g.wait_booted()
    g.wait_key("host.hostname", a.hostname, timeout=60)
    old_nvr = g.out("rpm -q hostkv-agent")
    assert old_nvr.endswith("-1.noarch"), old_nvr
    pid_before = g.unit_property("hostkv-agent.service", "MainPID")
    with open(str(release2.agent), "rb") as f:
        put_file(g, "/var/tmp/hostkv-agent-new.rpm", f.read())
    g.out("mkdir -p /run/hostkv-test")
    put_file(g, "/run/hostkv-test/watch.py", WATCHER.encode())

    g.out("systemd-run --unit=hostkv-test-watch python3 /run/hostkv-test/watch.py")
    lh.wait_for(lambda: g.sh("test -e /run/hostkv-test/watching")["rc"] == 0, 30, what="the watcher")
    up = g.sh("rpm -U --nodeps /var/tmp/hostkv-agent-new.rpm", timeout=180)
    assert up["rc"] == 0, up
    g.wait_key("host.hostname", a.hostname, timeout=60)
    lh.wait_for(lambda: g.published()["stale"] is False, 60, what="fresh values after the upgrade")
    g.out("touch /run/hostkv-test/stop-watch")
    lh.wait_for(lambda: g.sh("test -e /run/hostkv-test/watch.json")["rc"] == 0, 30, what="the watch result")
    import json
    watch = json.loads(g.out("cat /run/hostkv-test/watch.json"))

    assert g.out("rpm -q hostkv-agent").endswith("-2.noarch")
    assert "warning" not in up["stdout"] + up["stderr"].replace("RPM should not be used directly", ""), up
    pid_after = g.unit_property("hostkv-agent.service", "MainPID")
    assert pid_after not in ("0", pid_before), (pid_before, pid_after)      # restarted, running
    assert g.sh("systemctl is-active hostkv-agent")["stdout"].strip() == "active"
    assert watch["checks"] > 50 and watch["misses"] == 0, watch               # never without values
    assert g.sh("rpm -V --nodeps hostkv-agent")["rc"] == 0

    # erase: stopped, disabled, and everything it installed (and published) is gone
    files = g.out("rpm -ql hostkv-agent").splitlines()
    er = g.sh("rpm -e hostkv-agent", timeout=180)
    assert er["rc"] == 0, er
    assert g.sh("systemctl is-active hostkv-agent")["stdout"].strip() in ("inactive", "unknown")
    assert g.sh("rpm -q hostkv-agent")["rc"] != 0
    left = g.sh("for f in %s; do [ -e \"$f\" ] || [ -L \"$f\" ] && echo \"$f\"; done; true"
                % " ".join(files + ["/usr/lib/hostkv-agent", "/run/hostkv", "/var/lib/hostkv"]))
    assert left["stdout"].split() == [], left
    units = g.out("systemctl list-units --all --plain --no-legend 'hostkv-agent*'; "
                  "find /etc/systemd -name 'hostkv-agent*'")
    assert units == "", units
    assert g.sh("command -v hostkv")["rc"] != 0
    # the port (this guest has one) no longer makes systemd want the erased unit
    lh.wait_for(lambda: "SYSTEMD_WANTS" not in g.out("udevadm info --query=property /dev/virtio-ports/org.hostkv.0"),
                30, what="udev to forget SYSTEMD_WANTS=hostkv-agent.service after the erase")
