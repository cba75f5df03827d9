"""One real cobblerd 3.3.10 and two real libvirt hosts with hostkvd polling it, for a whole module.

``live`` (module scope) is a :class:`LiveWorld`:

  * ``cobbler`` - tests/harness/cobbler_server.CobblerServer (its own mount namespace; hostkvd reads
    it through its HTTP front at ``cobbler.api_url``, as it would through Apache).  Objects: distro
    ``cl-distro`` (dummy kernel files: nothing boots from Cobbler here), profile ``cl-web``
    (``hostkv_enabled=1 hostkv_vm_tier=front``), systems ``web1`` and ``web2`` (the guests' records)
    and one system per KVM host, named by its host name (``hostkv-test-a``/``-b``), holding
    ``hostkv_host_*`` keys.  The hostkv Cobbler plugin is NOT installed: its validator would refuse
    the invalid record one test needs (a record "edited before the plugin was installed").
  * ``a``, ``b`` - tests/harness/libvirt_hosts.LibvirtHost, each running hostkvd with
    ``[cobbler] server = <api_url>``, ``interval = INTERVAL`` and a cache in its own dir.
  * ``start_guest(host, name, system)`` - a test guest (transient, so it can migrate) linked to a
    Cobbler system with ``hostkvctl vm link``; guests are destroyed at the end of the module.

If a real component cannot start, the fixture raises: the tests fail, never skip.
"""
import os
import shutil
import tempfile

import pytest

from tests.harness import libvirt_hosts as lh
from tests.harness.cobbler_server import CobblerServer

INTERVAL = 2.0          # hostkvd's poll interval in these tests (the default is 5 s)
DISTRO, PROFILE = "cl-distro", "cl-web"

HOSTKVD_CONFIG = """[host]
host.row = {row}
[cobbler]
server = {server}
interval = {interval:g}
cache = {cache}
"""


class LiveWorld(object):
    def __init__(self, image):
        self.image = image
        self.base = tempfile.mkdtemp(prefix="hostkv-cl-")
        os.chmod(self.base, 0o755)
        self.workdir = lh.make_world_readable_dir("hostkv-cl-guests-")
        self.cobbler = None
        self.a = self.b = None
        self.guests = []

    def start(self):
        try:
            self.cobbler = CobblerServer().start()
            self._objects()
            self.a = lh.LibvirtHost("a", os.path.join(self.base, "a")).start()
            self.b = lh.LibvirtHost("b", os.path.join(self.base, "b"), cache_from=self.a).start()
            for host, row in ((self.a, "1"), (self.b, "2")):
                cache = os.path.join(host.basedir, "hostkvd", "cobbler-host.json")
                host.start_hostkvd(HOSTKVD_CONFIG.format(row=row, server=self.cobbler.api_url,
                                                         interval=INTERVAL, cache=cache))
        except BaseException:
            self.stop()
            raise
        return self

    def _objects(self):
        files = os.path.join(self.base, "boot")
        os.makedirs(files)
        for name in ("vmlinuz", "initrd.img"):
            with open(os.path.join(files, name), "w") as f:
                f.write("not a real kernel\n")
        cli = self.cobbler.cli
        cli(["distro", "add", "--name=" + DISTRO, "--arch=x86_64", "--breed=redhat", "--os-version=rhel9",
             "--kernel=" + os.path.join(files, "vmlinuz"), "--initrd=" + os.path.join(files, "initrd.img"),
             "--autoinstall-meta=tree=http://127.0.0.1/none"])
        cli(["profile", "add", "--name=" + PROFILE, "--distro=" + DISTRO,
             "--autoinstall-meta=hostkv_enabled=1 hostkv_vm_tier=front"])
        for i, (name, meta) in enumerate((("web1", "hostkv_vm_role=web hostkv_vm_app=shop"),
                                          ("web2", "hostkv_vm_role=cache"),
                                          ("hostkv-test-a", "hostkv_host_dc=fra1"),
                                          ("hostkv-test-b", "hostkv_host_dc=ams2 hostkv_host_rack=r9"))):
            cli(["system", "add", "--name=" + name, "--profile=" + PROFILE, "--interface=eth0",
                 "--mac-address=52:54:00:00:10:%02x" % i, "--autoinstall-meta=" + meta])

    def start_guest(self, host, name, system):
        g = lh.start_guest(host, name, self.image, self.workdir, persistent=False)
        self.guests.append(g)
        g.wait_booted()
        host.hostkvctl(["vm", "link", name, "--cobbler-system", system], check=True)
        return g

    def edit_system(self, name, meta_text):
        """The admin's CLI edit: ``cobbler system edit --name=NAME --in-place --autoinstall-meta=...``."""
        self.cobbler.cli(["system", "edit", "--name=" + name, "--in-place", "--autoinstall-meta=" + meta_text])

    def xmlrpc_edit_system(self, name, changes):
        """What cobbler-web sends: modify_system(autoinstall_meta) + save_system, with the admin's token."""
        api, token = self.cobbler.xmlrpc, self.cobbler.token
        meta = dict(api.get_system(name)["autoinstall_meta"])
        meta.update(changes)
        handle = api.get_system_handle(name, token)
        api.modify_system(handle, "autoinstall_meta", meta, token)
        api.save_system(handle, token)

    def stop(self):
        for part in (self.b, self.a, self.cobbler):
            if part is not None:
                try:
                    part.stop()
                except Exception:  # noqa: BLE001 - stop the rest anyway
                    pass
        shutil.rmtree(self.base, ignore_errors=True)
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def live():
    from tests.harness.guest_image import build_guest_image
    world = LiveWorld(build_guest_image()).start()
    try:
        yield world
    finally:
        world.stop()
