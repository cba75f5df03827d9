"""koan end to end with the real-OS guest: koan creates the domain, the guest boots its disk
(the kickstarted Debian 12 systemd system), udev starts the agent, and it answers.

The koan world is tests/koan/koan_world.py's (real cobblerd, koan 3.0.1 with hostkv-koan,
virt-install, libvirt, hostkvd in the KVM host's namespaces); only the "installer" differs: the
distro's kernel/initrd are the real-OS guest's (its initramfs mounts root=/dev/vda and starts
systemd), and the disk koan gives the domain is the kickstarted image, placed where koan puts
its disk (/var/lib/libvirt/images/<name>-disk0): koan keeps an existing disk file.
"""
import subprocess

import pytest

from tests.harness import libvirt_hosts as lh
from tests.koan.koan_world import HOSTKV_PROFILE, KoanWorld

pytestmark = [pytest.mark.real_os, pytest.mark.cobbler, pytest.mark.libvirt, pytest.mark.vm]


@pytest.fixture(scope="module")
def koan_world(realos_base):
    w = KoanWorld(realos_base).start()
    try:
        w.cobbler.cli(["profile", "edit", "--name=" + HOSTKV_PROFILE, "--virt-ram=512",
                       "--kernel-options=root=/dev/vda rw console=ttyS0 panic=-1"])
        w.add_system("rweb1", HOSTKV_PROFILE, meta="hostkv_vm_role=realweb", mac="52:54:00:00:01:01")
        yield w
    finally:
        w.stop()


def test_koan_creates_the_domain_and_the_real_os_guest_answers(koan_world, realos_install):
    w = koan_world
    subprocess.run(["cp", "--sparse=always", realos_install.disk.raw, w.disk_path("rweb1")], check=True)
    try:
        run = w.koan("rweb1")
        assert run.rc == 0, run
        assert "- hostkv: channel org.hostkv.0, keys: vm.role=realweb" in run.output, run
        ex = w.guest_exec("rweb1")
        w.wait_exec(ex, "rweb1", timeout=300)
        state = ex.run(sh="systemctl is-system-running --wait", timeout=300)
        assert state["stdout"].strip() == "running", (state, ex.run(sh="systemctl --failed"))
        assert ex.run(sh="systemctl is-active hostkv-agent")["stdout"].strip() == "active"
        lh.wait_for(lambda: ex.run(cmd=["cat", "/run/hostkv/keys/host.hostname"])["stdout"]
                    == w.host.hostname, 60, what="the koan guest to publish the host's name")
        user = ex.run(cmd=["runuser", "-l", "alice", "-c", "hostkv get host.hostname; echo; hostkv get vm.role"])
        assert user["rc"] == 0 and user["stdout"].split() == [w.host.hostname, "realweb"], user
    finally:
        w.remove_domain("rweb1")
