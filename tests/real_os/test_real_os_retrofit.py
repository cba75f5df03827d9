"""Hot-plug retrofit of a RUNNING real-OS guest: RPM installed, no port, `hostkvctl enable`.

No reboot anywhere (one boot id throughout).  Phase 1 is the kickstarted guest as it is (the
agent enabled and waiting for its port); phase 2 is a guest whose agent nothing started (as with
EL's default-disabled presets): then only udev's SYSTEMD_WANTS on the hot-plugged port starts it.
"""
import pytest

from tests.harness import libvirt_hosts as lh
from tests.real_os.test_first_boot import PORT_DEV, device_unit

pytestmark = [pytest.mark.real_os, pytest.mark.libvirt, pytest.mark.vm]


def test_enable_hot_plugs_the_port_udev_and_the_agent_serve_without_reboot(realos_hosts, realos_guests):
    a = realos_hosts["a"]
    g = realos_guests.start(a, "ro-retro", hostkv_channel=False)
    g.wait_booted()
    boot_id = g.boot_id()
    assert g.sh("test -e %s" % PORT_DEV)["rc"] != 0
    assert g.sh("systemctl is-active hostkv-agent")["stdout"].strip() == "active"
    g.wait_journal("hostkv-agent", "waiting for the port")
    assert g.key("host.hostname") is None

    # phase 1: the agent is running and waiting; the port is hot-plugged
    cursor = g.journal_cursor()
    res = a.hostkvctl(["enable", "ro-retro"])
    assert res.returncode == 0, res.stdout + res.stderr
    lh.wait_for(lambda: g.sh("test -L %s" % PORT_DEV)["rc"] == 0, 30,
                what="udev to create %s" % PORT_DEV)
    g.wait_key("host.hostname", a.hostname, timeout=60)
    assert "hostkv-agent.service" in g.unit_property(device_unit(g), "Wants").split()
    g.wait_journal("hostkv-agent", "host connected on", since_cursor=cursor)
    assert g.boot_id() == boot_id

    # disable: the port goes away, the agent notices, says so, and stops vouching for the data
    cursor = g.journal_cursor()
    res = a.hostkvctl(["disable", "ro-retro"])
    assert res.returncode == 0, res.stdout + res.stderr
    prio, msg = g.wait_journal("hostkv-agent", "port lost", since_cursor=cursor)
    assert prio == 4, (prio, msg)
    lh.wait_for(lambda: g.published()["stale"] and not g.published()["connected"], 30,
                what="the agent to republish the values as stale")
    assert g.sh("test -e %s" % PORT_DEV)["rc"] != 0
    assert g.sh("systemctl is-active hostkv-agent")["stdout"].strip() == "active"

    # phase 2: nothing starts the agent at boot any more; only udev can
    g.out("systemctl disable --now hostkv-agent.service")
    assert g.sh("systemctl is-active hostkv-agent")["stdout"].strip() == "inactive"
    res = a.hostkvctl(["enable", "ro-retro"])
    assert res.returncode == 0, res.stdout + res.stderr
    lh.wait_for(lambda: g.sh("systemctl is-active hostkv-agent")["stdout"].strip() == "active", 60,
                what="udev's SYSTEMD_WANTS to start hostkv-agent on the hot-plugged port")
    lh.wait_for(lambda: g.published()["stale"] is False, 60, what="fresh values from the restarted agent")
    assert g.key("host.hostname") == a.hostname
    assert g.boot_id() == boot_id
