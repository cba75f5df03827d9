"""`koan --virt --system=NAME --server=COBBLER` with hostkv-koan: all real, end to end.

Real cobblerd 3.3.10 (+ its HTTP front), real koan 3.0.1 (its own venv, hostkv-koan installed
with `hostkv-koan install`), real virt-install 4.1, libvirtd and QEMU (TCG here), real hostkvd on
the "KVM host", and the real hostkv agent inside the guest.  See tests/koan/koan_world.py for the
set-up, in short: the Cobbler distro's kernel+initrd are the hostkv TEST GUEST published as an
install tree, so the "installer" virt-install boots (via koan's --location) is the test guest
itself - it never installs anything, it boots and runs the agent.  koan runs inside the libvirt
host's namespaces, so its qemu:///system is that host's libvirtd (no URI override anywhere).

The four koan 3.0.1 bugs against Cobbler 3.3: stock koan (extension not installed) stops at the
first one, so each bug is reproduced with the extension installed but that ONE fix switched off
(HOSTKV_KOAN_DISABLE=<fix>), and shown fixed by the normal run of system web1.
"""

import os

import pytest

from tests.harness.guest_image import build_guest_image
from tests.koan.koan_env import KoanEnv
from tests.koan.koan_world import (BRIDGE, DISK_GB, HOSTKV_PROFILE, PLAIN_PROFILE, KoanWorld,
                                   argv_value, image_virtual_size)

pytestmark = [pytest.mark.cobbler, pytest.mark.libvirt, pytest.mark.vm]

CHANNEL = ["--channel", "unix,target_type=virtio,name=org.hostkv.0"]
NO_INSTALL_SOURCE = "Cannot find install source in autoinst file, aborting."
GiB = 1024 ** 3


@pytest.fixture(scope="module")
def world():
    w = KoanWorld(build_guest_image()).start()
    try:
        w.add_system("web1", HOSTKV_PROFILE, meta="hostkv_vm_role=web", mac="52:54:00:00:00:01")
        w.add_system("plain1", PLAIN_PROFILE, mac="52:54:00:00:00:02")
        w.add_system("fixes1", HOSTKV_PROFILE, meta="hostkv_vm_role=db", mac="52:54:00:00:00:03")
        w.add_system("bad1", HOSTKV_PROFILE, meta="hostkv_vm_r@le=web", mac="52:54:00:00:00:04")
        # Like any Cobbler server that has been restarted since the systems were added: the
        # interfaces' empty virt_bridge is loaded back from disk as "<<inherit>>" (bug 4's input).
        w.cobbler.restart()
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def web1(world):
    """THE koan run: system web1 (profile with hostkv_enabled=1, hostkv_vm_role=web)."""
    run = world.koan("web1")
    assert run.rc == 0, run
    assert run.argv is not None, run
    return run


def _url(world, path):
    return "http://127.0.0.1:%d%s" % (world.cobbler.http_port, path)


# ---------------------------------------------------------------- what Cobbler 3.3 sends

def test_cobbler_33_sends_what_koan_301_trips_over(world):
    data = world.rendered("fixes1")
    assert "autoinst" not in data                                        # bug 1
    assert data["autoinstall"] == "sample.ks"       # a template name, not a URL koan can read
    assert data.get("kickstart", "sample.ks") == "sample.ks"  # (legacy key, after a restart)
    assert data["virt_file_size"] == float(DISK_GB)                      # bug 3
    assert isinstance(data["virt_file_size"], float)
    assert data["interfaces"]["eth0"]["virt_bridge"] == "<<inherit>>"   # bug 4
    assert "hostkv_enabled=1" in data["autoinstall_meta"]
    assert "hostkv_vm_role=db" in data["autoinstall_meta"]


def test_stock_koan_fails_against_cobbler_33(world, tmp_path):
    stock = KoanEnv.create(str(tmp_path / "stock"))
    assert not os.path.exists(os.path.join(stock.site, "hostkv_koan.pth"))
    run = world.koan("fixes1", env=stock)
    try:
        assert run.rc == 1, run
        assert NO_INSTALL_SOURCE in run.output, run
        # it reads Cobbler's template NAME as if it were the kickstart's URL, finds no tree
        assert "- reading URL: sample.ks" in run.output
        assert "install_tree:" not in run.output
        assert "- hostkv:" not in run.output
        assert "fixes1" not in world.domain_names()
    finally:
        world.remove_domain("fixes1")


# ---------------------------------------------------------------- the four fixes

def test_fix_autoinstall_key(world, web1):
    off = world.koan("fixes1", disable=["autoinstall"])
    try:
        assert off.rc == 1, off
        assert NO_INSTALL_SOURCE in off.output, off
        assert "- reading URL: sample.ks" in off.output
        assert "install_tree:" not in off.output
    finally:
        world.remove_domain("fixes1")
    # on: the kickstart is found, read (through the port fix) and yields the install tree
    assert "- reading URL: %s" % _url(world, "/cblr/svc/op/ks/system/web1") in web1.output, web1
    assert "install_tree: %s" % world.tree_url in web1.output
    assert argv_value(web1.argv, "--location") == world.tree_url + "/"
    assert argv_value(web1.argv, "--extra-args").startswith(
        "ks=" + _url(world, "/cblr/svc/op/autoinstall/system/web1"))


def test_fix_kickstart_url_port(world, web1):
    off = world.koan("fixes1", disable=["port"])
    try:
        assert off.rc == 1, off
        assert "- reading URL: http://127.0.0.1/cblr/svc/op/ks/system/fixes1" in off.output, off
        assert NO_INSTALL_SOURCE in off.output
    finally:
        world.remove_domain("fixes1")
    assert "- reading URL: %s" % _url(world, "/cblr/svc/op/ks/system/web1") in web1.output


def test_fix_float_virt_file_size(world, web1):
    off = world.koan("fixes1", disable=["filesize"])
    try:
        assert off.rc == 0, off                   # silently the wrong disk
        assert "invalid file size specified, using defaults" in off.output
        assert "size=1," in argv_value(off.argv, "--disk")
        assert image_virtual_size(world.disk_path("fixes1")) == 1 * GiB
    finally:
        world.remove_domain("fixes1")
    assert "invalid file size" not in web1.output
    assert "size=%d," % DISK_GB in argv_value(web1.argv, "--disk")
    assert image_virtual_size(world.disk_path("web1")) == DISK_GB * GiB


def test_fix_inherited_interface_bridge(world, web1):
    off = world.koan("fixes1", disable=["bridge"])
    try:
        assert off.rc == 1, off
        assert argv_value(off.argv, "--network").startswith("bridge=<<inherit>>"), off
        assert "fixes1" not in world.domain_names()
    finally:
        world.remove_domain("fixes1")
    assert argv_value(web1.argv, "--network") == "bridge=%s,mac=52:54:00:00:00:01" % BRIDGE


# ---------------------------------------------------------------- hostkv

def test_hostkv_guest_end_to_end(world, web1):
    from hostkv.common import domain_xml
    try:
        assert web1.argv[-2:] == CHANNEL, web1.argv
        assert "- hostkv: channel org.hostkv.0, keys: vm.role=web" in web1.output
        live = world.domain_xml("web1")
        chans = domain_xml.find_channels(live)
        assert len(chans) == 1 and chans[0]["type"] == "unix" and chans[0]["mode"] == "bind", chans
        assert domain_xml.metadata_from_domain(live) == ({"vm.role": "web"}, [])
        assert domain_xml.metadata_from_domain(world.domain_xml("web1", inactive=True)) == \
            ({"vm.role": "web"}, [])
        assert domain_xml.find_channels(world.domain_xml("web1", inactive=True))
        # the guest records where it came from: this Cobbler server and system web1 (issue 14);
        # its keys are that link's keys, so hostkvd's [cobbler] source keeps them in line
        for xml in (live, world.domain_xml("web1", inactive=True)):
            meta, problems = domain_xml.domain_metadata(xml)
            assert problems == [] and meta.keys == {}
            link = meta.source("cobbler")
            assert link.identity() == {"server": _url(world, "/cobbler_api"), "system": "web1"}, link.attrs
            assert link.values == {"vm.role": "web"}
        assert "linked to cobbler server=%s system=web1" % _url(world, "/cobbler_api") in web1.output

        ex = world.guest_exec("web1")
        world.wait_exec(ex, "web1")
        hostname = ex.run(cmd=["hostkv", "get", "host.hostname"], timeout=60)
        assert hostname["rc"] == 0, hostname
        assert hostname["stdout"] == world.host.hostname
        role = ex.run(cmd=["hostkv", "get", "vm.role"], timeout=60)
        assert role["rc"] == 0, role
        assert role["stdout"] == "web"
    finally:
        world.remove_domain("web1")


def test_profile_without_hostkv_gets_stock_argv(world):
    """No hostkv_enabled: no channel, no metadata, and the very argv koan builds without the
    hostkv piece (HOSTKV_KOAN_DISABLE=hostkv: stock koan + the four fixes, which stock koan 3.0.1
    needs to build any argv at all against Cobbler 3.3)."""
    from hostkv.common import domain_xml
    try:
        run = world.koan("plain1")
        assert run.rc == 0, run
        assert "--channel" not in run.argv
        assert "- hostkv:" not in run.output
        xml = world.domain_xml("plain1", inactive=True)
        assert domain_xml.find_channels(xml) == []
        assert domain_xml.metadata_from_domain(xml) == ({}, [])
        world.remove_domain("plain1")
        stock = world.koan("plain1", disable=["hostkv"])
        assert stock.rc == 0, stock
        assert run.argv == stock.argv
    finally:
        world.remove_domain("plain1")


def test_invalid_key_stops_before_anything_is_created(world):
    run = world.koan("bad1")
    try:
        assert run.rc == 1, run
        assert "hostkv: hostkv_vm_r@le (hostkv key vm.r@le)" in run.output, run     # the validator's words
        assert run.argv is None
        assert "qemu-img" not in run.output
        assert "bad1" not in world.domain_names()
        assert not os.path.exists(world.disk_path("bad1"))
    finally:
        world.remove_domain("bad1")
