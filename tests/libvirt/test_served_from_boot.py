"""A guest defined with the hostkv channel is served from boot; vm.* keys reach that guest only."""
import json
import time

import pytest

from tests.libvirt.helpers import channels

pytestmark = [pytest.mark.libvirt, pytest.mark.vm]


def test_served_from_boot_and_vm_set_reaches_only_that_guest(lv_hosts, guests):
    a = lv_hosts["a"]
    web = guests.start(a, "web1", metadata_values={"vm.role": "db"})
    other = guests.start(a, "other1")
    web.wait_booted()
    other.wait_booted()

    # served from boot: the libvirt host's name, its configured keys, the domain's metadata
    web.wait_key("host.hostname", a.hostname, timeout=20)
    other.wait_key("host.hostname", a.hostname, timeout=20)
    assert web.key("host.rack") == "ra"
    assert web.key("vm.role") == "db"
    assert other.key("vm.role") is None
    cli = web.exec.run(cmd=["hostkv", "get", "host.hostname"])
    assert cli["rc"] == 0, cli
    assert cli["stdout"].strip() == a.hostname

    status = a.hostkvctl(["status"], check=True).stdout
    assert "host_id %s" % a.host_uuid in status and "host.hostname = \"%s\"" % a.hostname in status
    assert [line.split()[:2] for line in status.splitlines() if line.startswith("  web1 ")] == [["web1", "serving"]]
    before = channels(a)["other1"]
    res = a.hostkvctl(["vm", "set", "web1", "vm.role=web", "tier=front"], check=True)
    sent = time.monotonic()
    web.wait_key("vm.role", "web", timeout=5, interval=0.02)
    took = time.monotonic() - sent
    assert took < 1.0, "vm set took %.2fs to reach the guest" % took
    assert web.key("vm.tier") == "front"          # bare key = vm.tier
    assert "web1: set (config, live)" in res.stdout

    # the other guest got nothing: same snapshot generation, no extra push, no vm keys
    after = channels(a)["other1"]
    assert (after["generation"], after["pushes"]) == (before["generation"], before["pushes"])
    assert other.key("vm.role") is None and other.key("vm.tier") is None

    # persisted in the definition too, and readable back
    got = a.hostkvctl(["vm", "get", "web1", "--config", "--json"], check=True).stdout
    assert json.loads(got)["values"] == {"vm.role": "web", "vm.tier": "front"}
    a.hostkvctl(["vm", "unset", "web1", "tier"], check=True)
    web.wait_key("vm.tier", None, timeout=5)
    bad = a.hostkvctl(["vm", "set", "web1", "host.x=1"])
    assert bad.returncode == 2 and "not a vm.* key" in bad.stderr
    missing = a.hostkvctl(["vm", "get", "nosuchdomain"])
    assert missing.returncode == 4
