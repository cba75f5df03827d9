"""Helpers of the Cobbler tests: `make rpms`, the installer, snapshots of its install targets, and
rendering the hostkv_agent snippet with Cobbler's own Templar (in-process, no cobblerd)."""

import hashlib
import os
import subprocess

from tests.harness.cobbler_server import PYTHON, REPO
from tests.harness.rpms import find_rpms

INSTALLER = os.path.join(REPO, "cobbler_plugin", "bin", "hostkv-cobbler")
DISTRO = "hk-distro"
TREE = "http://127.0.0.1/hostkv-test-tree"


def make_rpms(dist, release="1"):
    """`make rpms` into ``dist``; returns the RpmSet (fails loudly with make's output)."""
    proc = subprocess.run(["make", "-C", REPO, "rpms", "DIST=%s" % dist, "RELEASE=%s" % release],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=300)
    assert proc.returncode == 0, "make rpms failed:\n" + proc.stdout
    return find_rpms(dist)


def installer(server, action, *extra):
    """Run `hostkv-cobbler ACTION` inside the server's namespace, with Cobbler's Python."""
    env = dict(os.environ, HOSTKV_COBBLER_PYTHON=PYTHON)
    return server.run(["sh", INSTALLER, action] + list(extra), env=env)


def install_targets(server):
    """Where the installer writes: Cobbler's modules dir, snippets, templates, its manifest dir."""
    return (os.path.join(server.package_dir, "modules"), "/var/lib/cobbler/snippets",
            "/var/lib/cobbler/templates", "/var/lib/hostkv-cobbler")


def snapshot(server):
    """{path: sha256-or-'dir'} of everything under the install targets (namespace paths)."""
    out = {}
    for top in install_targets(server):
        base = server.path(top)
        for dirpath, dirnames, filenames in os.walk(base):
            rel = dirpath[len(base):]
            out[top + rel] = "dir"
            for name in filenames:
                with open(os.path.join(dirpath, name), "rb") as f:
                    out[top + rel + "/" + name] = hashlib.sha256(f.read()).hexdigest()
    return out


class Installed:
    def __init__(self, server, rpms, before, install_output):
        self.server = server
        self.rpms = rpms
        self.before_install = before
        self.install_output = install_output

    def __getattr__(self, name):
        return getattr(self.server, name)


SNIPPET = os.path.join(REPO, "kickstart_snippets", "hostkv_agent")


class _TemplarApi:
    """What cobbler.templar.Templar needs of an API: Cobbler's real default settings."""

    def __init__(self):
        from cobbler.settings import Settings
        self._settings = Settings()

    def settings(self):
        return self._settings


def render_snippet(meta, path=SNIPPET):
    """The hostkv_agent snippet rendered by Cobbler 3.3's real Templar (Cheetah) with ``meta`` as
    the blended autoinstall_meta (plus the variables Cobbler always sets)."""
    from cobbler.templar import Templar
    templar = Templar(_TemplarApi())
    with open(path) as f:
        text = f.read()
    table = {"http_server": "192.0.2.1", "server": "192.0.2.1", "http_port": "80"}
    table.update(meta)
    out = templar.render(text, table, None)
    assert not templar.last_errors, templar.last_errors
    return out
