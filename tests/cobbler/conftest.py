"""Fixtures for the Cobbler side: one real cobblerd for the session, hostkv's plugin installed in it.

* ``cobbler_server``  -- a started :class:`tests.harness.cobbler_server.CobblerServer` (session).
* ``agent_rpms``      -- the RPMs ``make rpms`` builds (into a temp DIST, so dist/ is not touched).
* ``hostkv_cobbler``  -- the server with the plugin installed by ``hostkv-cobbler install``,
  ``/etc/hostkv/cobbler.conf`` pointing at ``agent_rpms``, cobblerd restarted, one distro
  (``hk-distro``, dummy kernel/initrd, ``tree=`` meta) and ``cobbler sync`` run (module).
  ``.before_install`` holds the snapshot of the install targets taken before installing.
"""

import os

import pytest

from tests.cobbler.cobbler_setup import DISTRO, TREE, Installed, installer, make_rpms, snapshot
from tests.harness.cobbler_server import CobblerServer


@pytest.fixture(scope="session")
def cobbler_server():
    server = CobblerServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def agent_rpms(tmp_path_factory):
    return make_rpms(str(tmp_path_factory.mktemp("dist")))


@pytest.fixture(scope="module")
def hostkv_cobbler(cobbler_server, agent_rpms, tmp_path_factory):
    server = cobbler_server
    before = snapshot(server)
    proc = installer(server, "install")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    os.makedirs(server.path("/etc/hostkv"), exist_ok=True)
    with open(server.path("/etc/hostkv/cobbler.conf"), "w") as f:
        f.write("# written by tests/cobbler/conftest.py\nrpm_dir = %s\n"
                % os.path.dirname(str(agent_rpms.agent)))
    server.restart()
    files = tmp_path_factory.mktemp("boot")
    for name in ("vmlinuz", "initrd.img"):
        (files / name).write_bytes(b"not a real kernel\n")
    if DISTRO not in server.xmlrpc.get_item_names("distro"):
        server.cli(["distro", "add", "--name=" + DISTRO, "--arch=x86_64", "--breed=redhat",
                    "--os-version=rhel9", "--kernel=%s" % (files / "vmlinuz"),
                    "--initrd=%s" % (files / "initrd.img"), "--autoinstall-meta=tree=" + TREE])
    sync = server.cli(["sync"])
    assert "*** TASK COMPLETE ***" in sync.stdout, sync.stdout + sync.stderr
    return Installed(server, agent_rpms, before, proc.stdout)
