"""hostkvctl enable/disable on RUNNING guests that were defined without the hostkv channel."""
import libvirt
import pytest

from tests.harness import libvirt_hosts as lh
from hostkv.common import domain_xml as dx
from tests.libvirt.helpers import canonical, channels

pytestmark = [pytest.mark.libvirt, pytest.mark.vm]


def _config_xml(g):
    return g.dom().XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)


def test_enable_hot_plugs_without_reboot_and_disable_removes_exactly_it(lv_hosts, guests):
    a = lv_hosts["a"]
    g = guests.start(a, "retro1", hostkv_channel=False)    # has virtio-serial (the test exec port)
    g.wait_booted()
    boot_id = g.exec.run(cmd=["cat", "/proc/sys/kernel/random/boot_id"], check=True)["stdout"]
    agent = g.exec.run(sh="ps | grep '[h]ostkv-agent'")
    assert agent["rc"] == 0, "the agent must already be running: %r" % agent
    assert g.key("host.hostname") is None
    assert "retro1" not in channels(a)
    config_before = _config_xml(g)
    live_before = g.dom().XMLDesc(0)

    res = a.hostkvctl(["enable", "retro1"])
    assert res.returncode == 0, res.stderr
    assert "retro1: enabled (live: channel; config: channel)" in res.stdout

    # values arrive with no reboot
    g.wait_key("host.hostname", a.hostname, timeout=15)
    assert g.exec.run(cmd=["cat", "/proc/sys/kernel/random/boot_id"])["stdout"] == boot_id
    assert channels(a)["retro1"]["connected"]
    # persisted, with our alias; nothing else changed
    assert [c["alias"] for c in dx.find_channels(_config_xml(g))] == [dx.CHANNEL_ALIAS]
    assert len(dx.virtio_serial_controllers(_config_xml(g))) == 1

    again = a.hostkvctl(["enable", "--all"])      # the only domain on host a now: idempotent
    assert again.returncode == 0 and "retro1: already enabled" in again.stdout, again.stdout + again.stderr

    res = a.hostkvctl(["disable", "retro1"])
    assert res.returncode == 0, res.stderr
    assert "pending" not in res.stdout, res.stdout
    assert canonical(_config_xml(g)) == canonical(config_before)
    assert canonical(g.dom().XMLDesc(0)) == canonical(live_before)
    lh.wait_for(lambda: "retro1" not in channels(a), 5, what="hostkvd to stop serving the disabled guest")
    # the guest and its other port still work: disable took out only the hostkv channel
    assert g.exec.run(cmd=["cat", "/proc/sys/kernel/random/boot_id"])["stdout"] == boot_id
    assert a.hostkvctl(["disable", "retro1"]).stdout.startswith("retro1: was not enabled")


def test_running_guest_without_virtio_serial_is_refused_live_and_enabled_for_next_boot(lv_hosts, guests):
    a = lv_hosts["a"]
    bare = guests.start(a, "bare1", hostkv_channel=False, exec_channel=False)   # no virtio-serial at all
    config_before, live_before = _config_xml(bare), bare.dom().XMLDesc(0)
    assert not dx.virtio_serial_controllers(live_before)

    res = a.hostkvctl(["enable", "bare1"])
    assert res.returncode == 1
    assert "cannot hot-plug" in res.stderr and "--next-boot" in res.stderr and "Nothing was changed" in res.stderr
    assert canonical(_config_xml(bare)) == canonical(config_before)
    assert canonical(bare.dom().XMLDesc(0)) == canonical(live_before)

    res = a.hostkvctl(["enable", "--next-boot", "bare1"])
    assert res.returncode == 0, res.stderr
    assert "bare1: enabled for the next boot (config: controller+channel)" in res.stdout
    config = _config_xml(bare)
    assert [c["alias"] for c in dx.find_channels(config)] == [dx.CHANNEL_ALIAS]
    assert dx.CONTROLLER_ALIAS in config
    assert canonical(bare.dom().XMLDesc(0)) == canonical(live_before)

    res = a.hostkvctl(["disable", "bare1"])
    assert res.returncode == 0, res.stderr
    assert canonical(_config_xml(bare)) == canonical(config_before)


def test_enable_refuses_a_domain_it_cannot_change(lv_hosts):
    a = lv_hosts["a"]
    res = a.hostkvctl(["enable", "no-such-domain"])
    assert res.returncode == 4 and "no domain 'no-such-domain'" in res.stderr
    res = a.hostkvctl(["enable"])
    assert res.returncode == 2
