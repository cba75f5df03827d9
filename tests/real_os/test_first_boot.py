"""First boot of the kickstarted guest: udev sees the port, systemd starts the RPM's unit.

The guest was installed by the kickstart %post (test_kickstart_install.py) and boots for the
first time with the hostkv channel: systemd (PID 1) and udev from Debian 12, the unit, udev rule
and tmpfiles entry from the hostkv-agent RPM.
"""
import pytest

from tests.harness.real_os_image import USER

pytestmark = [pytest.mark.real_os, pytest.mark.libvirt, pytest.mark.vm]

PORT_DEV = "/dev/virtio-ports/org.hostkv.0"


def device_unit(guest):
    """The port's MAIN device unit (named after its sysfs path): systemd applies a device's
    SYSTEMD_WANTS to that unit only, not to the /dev/virtio-ports/... alias units."""
    sysfs = guest.out("udevadm info --query=path %s" % PORT_DEV)
    return guest.out("systemd-escape --path --suffix=device /sys%s" % sysfs)


def test_first_boot_udev_starts_the_agent_and_a_user_reads_the_host(realos_hosts, realos_guests):
    a = realos_hosts["a"]
    g = realos_guests.start(a, "ro-first", metadata_values={"vm.role": "realos"})
    took = g.wait_booted()
    print("real-OS guest booted (exec server up + systemd finished) in %.1f s" % took)
    assert g.out("cat /proc/1/comm") == "systemd"

    # udev matched the RPM's rule on the REAL virtio-ports device: the port's device unit (made
    # by the rule's TAG+="systemd") wants the agent (its SYSTEMD_WANTS)
    info = g.out("udevadm info --query=property %s" % PORT_DEV)
    assert "SYSTEMD_WANTS=hostkv-agent.service" in info.splitlines(), info
    unit = device_unit(g)
    assert g.unit_property(unit, "ActiveState") == "active"
    assert "hostkv-agent.service" in g.unit_property(unit, "Wants").split()
    wanted_by = [u.strip('"').replace("\\\\", "\\")        # `systemctl show` quotes escaped names
                 for u in g.unit_property("hostkv-agent.service", "WantedBy").split()]
    assert unit in wanted_by, wanted_by

    assert g.sh("systemctl is-active hostkv-agent")["stdout"].strip() == "active"
    g.wait_key("host.hostname", a.hostname, timeout=60)

    # a normal login user reads it with the CLI
    user = g.as_user("id -un; hostkv get host.hostname; echo; hostkv get vm.role")
    assert user["rc"] == 0, user
    assert user["stdout"].split() == [USER, a.hostname, "realos"], user

    # journald has the agent's lines with their priorities (the <N> prefix is parsed, not shown)
    lines = g.journal("hostkv-agent", priority="info", ident="hostkv-agent")
    assert lines, g.sh("journalctl -b -u hostkv-agent --no-pager")
    assert all(not m.startswith("<") for _p, m in lines), lines
    assert any(p == 6 and m.startswith("info: hostkv-agent ") and " running; port " in m
               for p, m in lines), lines
    assert any(p == 6 and m.startswith("info: host connected on ") for p, m in lines), lines
    for prio, msg in lines:
        level = msg.split(":", 1)[0]
        assert {"info": 6, "warning": 4, "error": 3}[level] == prio, (prio, msg)
