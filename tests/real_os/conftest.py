"""Fixtures of the real-OS tests (marker ``real_os``): a Debian 12 guest with systemd and udev.

Session-scoped, built once and shared by every real_os test (each test boots its OWN domain from
its own qcow2 overlay, so tests never see each other's guest state):

* ``realos_base``   -- the cached base image (tests/harness/real_os_image.py): Debian 12 minbase +
  systemd-sysv, udev, python3, rpm; kernel + busybox initramfs; the test exec server unit.
* ``realos_rpms``   -- ``make rpms`` (release 1) into a temp dist dir.
* ``realos_install`` -- the kickstart: a real cobblerd renders profile ``realos-hostkv``
  (hostkv_enabled=1), its whole %post runs chrooted into a copy of the base root
  (tests/harness/kickstart_post.py), then ``mkfs.ext4 -d`` makes the disk.  ``.disk`` is the
  InstalledDisk every guest boots from, ``.post`` the PostResult, ``.root`` the installed tree.
* ``realos_hosts``  -- two simulated libvirt hosts a, b (tests/harness/libvirt_hosts.py, default
  layout), each with its own hostkvd.
* ``realos_guests`` (per test) -- ``realos_guests.start(host, name, **kw)``; destroyed after.

Nothing here skips: a component that cannot be built or started makes the tests fail.
"""
import os
import shutil
import tempfile

import pytest

from tests.harness import libvirt_hosts as lh
from tests.harness import real_os_guest as rg

HOSTKVD_CONFIG = "[host]\nhost.rack = r%s\n"


@pytest.fixture(scope="session")
def realos_workdir():
    """World-readable (QEMU runs as libvirt-qemu: overlays, console logs)."""
    path = lh.make_world_readable_dir("hostkv-realos-")
    yield path
    if os.environ.get("HOSTKV_KEEP_REALOS_DIRS"):
        print("real-OS work dir kept in %s" % path)
    else:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def realos_base():
    from tests.harness.real_os_image import build_base_image
    return build_base_image()


@pytest.fixture(scope="session")
def realos_rpms(tmp_path_factory):
    from tests.cobbler.cobbler_setup import make_rpms
    return make_rpms(str(tmp_path_factory.mktemp("realos-dist")))


class Installed(object):
    def __init__(self, disk, post, root, kickstart, rpms):
        self.disk, self.post, self.root, self.kickstart, self.rpms = disk, post, root, kickstart, rpms


@pytest.fixture(scope="session")
def realos_install(realos_base, realos_rpms, realos_workdir):
    from tests.harness import kickstart_post as kp
    from tests.harness.real_os_image import copy_root, make_disk
    work = os.path.join(realos_workdir, "install")
    os.makedirs(work)
    root = copy_root(realos_base, os.path.join(work, "root"))
    server = kp.start_cobbler_with_hostkv(tempfile.mkdtemp(prefix="hostkv-realos-cobbler-"),
                                          os.path.dirname(str(realos_rpms.agent)))
    try:
        ks = kp.render_kickstart(server)
        post = kp.run_post_in_root(kp.post_section(ks), root, os.path.join(work, "post"))
    finally:
        kp.stop(server)
    raw = make_disk(root, os.path.join(realos_workdir, "installed.raw"))
    disk = rg.InstalledDisk(realos_base.kernel, realos_base.initrd, raw)
    return Installed(disk, post, root, ks, realos_rpms)


@pytest.fixture(scope="session")
def realos_hosts(realos_workdir):
    base = tempfile.mkdtemp(prefix="hostkv-rohosts-")
    os.chmod(base, 0o755)
    hosts = {}
    try:
        hosts["a"] = lh.LibvirtHost("a", os.path.join(base, "a"), hostname="hostkv-ro-a").start()
        hosts["b"] = lh.LibvirtHost("b", os.path.join(base, "b"), hostname="hostkv-ro-b",
                                    cache_from=hosts["a"]).start()
        for name, host in hosts.items():
            host.start_hostkvd(HOSTKVD_CONFIG % name)
        yield hosts
    finally:
        for host in hosts.values():
            host.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def realos_guests(realos_hosts, realos_install, realos_workdir):
    started = []

    class Starter(object):
        disk = realos_install.disk

        def start(self, host, name, **kw):
            g = rg.start_real_os_guest(host, name, realos_install.disk, realos_workdir, **kw)
            started.append(g)
            return g

    yield Starter()
    for g in started:
        rg.destroy(g)
