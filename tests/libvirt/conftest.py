"""Fixtures for the libvirt tests: two real libvirt "hosts" (A and B), each with its own hostkvd.

Both hosts live for the whole session (starting one costs ~1-8 s); each test cleans up the guests
it starts.  If a real component cannot start, the fixture raises: the tests fail, never skip.

``lv_hosts`` is the pair in the default layout (modular, as EL9 runs libvirt: see
tests/harness/libvirt_hosts.py); ``lv_pairs.pair(layout)`` starts (once) and returns the pair in
any layout, for tests that run against both.
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


class HostPairs(object):
    """Host pairs a, b per libvirt layout, each started on first use and kept for the session."""

    def __init__(self):
        self.base = tempfile.mkdtemp(prefix="hostkv-lvhosts-")
        os.chmod(self.base, 0o755)
        self.pairs = {}

    def pair(self, layout):
        """``{'a': LibvirtHost, 'b': LibvirtHost}`` in ``layout``, each running libvirt and hostkvd."""
        if layout not in self.pairs:
            hosts = self.pairs[layout] = {}
            # the default layout keeps the host names tests have always seen
            suffix = "" if layout == lh.DEFAULT_LAYOUT else "-" + layout[:4]
            base = os.path.join(self.base, layout)
            hosts["a"] = lh.LibvirtHost("a", os.path.join(base, "a"), layout=layout,
                                        hostname="hostkv-test-a" + suffix).start()
            hosts["b"] = lh.LibvirtHost("b", os.path.join(base, "b"), layout=layout,
                                        hostname="hostkv-test-b" + suffix, cache_from=hosts["a"]).start()
            for name, host in hosts.items():
                host.start_hostkvd(HOSTKVD_CONFIG % name)
        return self.pairs[layout]

    def all_hosts(self):
        return [h for hosts in self.pairs.values() for h in hosts.values()]

    def stop(self):
        for host in self.all_hosts():
            host.stop()
        if os.environ.get("HOSTKV_KEEP_LIBVIRT_DIRS"):
            print("libvirt host dirs kept in %s" % self.base)
        else:
            shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def lv_pairs(lv_workdir):
    pairs = HostPairs()
    try:
        yield pairs
    finally:
        pairs.stop()


@pytest.fixture(scope="session")
def lv_hosts(lv_pairs):
    """``{'a': LibvirtHost, 'b': LibvirtHost}`` in the default layout, with hostkvd each."""
    return lv_pairs.pair(lh.DEFAULT_LAYOUT)


@pytest.fixture
def guests(lv_pairs, guest_image, lv_workdir):
    """Start guests with ``guests.start(host, name, **kw)``; all are destroyed after the test."""
    started = []

    class Starter(object):
        def start(self, host, name, **kw):
            g = lh.start_guest(host, name, guest_image, lv_workdir, **kw)
            started.append(g)
            return g

    yield Starter()
    for g in started:
        for host in lv_pairs.all_hosts():
            lh.remove_domain(host, g.name)
