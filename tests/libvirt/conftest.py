"""Fixtures for the libvirt tests: two real libvirt "hosts" (A and B), each with its own hostkvd.

Both hosts live for the whole session (starting one costs ~1-8 s); each test cleans up the guests
it starts.  If a real component cannot start, the fixture raises: the tests fail, never skip.
"""
import os
import shutil
import tempfile

import pytest

from tests.harness import libvirt_hosts as lh

HOSTKVD_CONFIG = "[host]\nhost.rack = r%s\n"


@pytest.fixture(scope="session")
def guest_image():
    from tests.harness.guest_image import build_guest_image
    return build_guest_image()


@pytest.fixture(scope="session")
def lv_workdir():
    """World-readable scratch dir (QEMU runs as libvirt-qemu: console logs, save files)."""
    path = lh.make_world_readable_dir("hostkv-libvirt-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def lv_hosts(lv_workdir):
    """``{'a': LibvirtHost, 'b': LibvirtHost}``, each running libvirtd and hostkvd."""
    base = tempfile.mkdtemp(prefix="hostkv-lvhosts-")
    os.chmod(base, 0o755)
    hosts = {}
    try:
        hosts["a"] = lh.LibvirtHost("a", os.path.join(base, "a")).start()
        hosts["b"] = lh.LibvirtHost("b", os.path.join(base, "b"), cache_from=hosts["a"]).start()
        for name, host in hosts.items():
            host.start_hostkvd(HOSTKVD_CONFIG % name)
        yield hosts
    finally:
        for host in hosts.values():
            host.stop()
        if os.environ.get("HOSTKV_KEEP_LIBVIRT_DIRS"):
            print("libvirt host dirs kept in %s" % base)
        else:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def guests(lv_hosts, guest_image, lv_workdir):
    """Start guests with ``guests.start(host, name, **kw)``; all are destroyed after the test."""
    started = []

    class Starter(object):
        def start(self, host, name, **kw):
            g = lh.start_guest(host, name, guest_image, lv_workdir, **kw)
            started.append(g)
            return g

    yield Starter()
    for g in started:
        for host in lv_hosts.values():
            try:
                dom = host.conn.lookupByName(g.name)
            except Exception:  # noqa: BLE001 - not on this host
                continue
            try:
                if dom.isActive():
                    dom.destroy()
                if dom.isPersistent():
                    dom.undefine()
            except Exception:  # noqa: BLE001
                pass
