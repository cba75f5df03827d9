"""The hostkv-cobbler RPM's whole story on a real cobblerd 3.3.10 (tests/harness/cobbler_server.py):

    dnf install hostkv-cobbler && hostkv-cobbler install && systemctl restart cobblerd && cobbler sync

"dnf install" = the real rpm into a scratch root (no scriptlets), whose /usr is then laid over the
server namespace's /usr (a read-only overlay, in that namespace only) and whose /etc/hostkv is
copied into the namespace's /etc overlay.  No cobbler.conf edits, no RPM copied by hand: the
agent RPM the package ships in /usr/share/hostkv/rpms/ is what `cobbler sync` publishes.
"""
import os
import shutil
import urllib.request
import xml.etree.ElementTree as ET

import pytest

from tests.harness.cobbler_server import CobblerServer, VENV
from tests.packaging.rpmtools import build, rpm_root

pytestmark = pytest.mark.cobbler
REPO_NS = "{http://linux.duke.edu/metadata/repo}"


def fetch(url):
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.status == 200, url
        return resp.read()


@pytest.fixture(scope="module")
def server():
    srv = CobblerServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_rpm_installed_plugin_publishes_its_agent_rpm(server, tmp_path):
    built = build(tmp_path / "dist", "1")
    root = tmp_path / "root"
    root.mkdir()
    rpm_root(root, "--noscripts", "-i", str(built.cobbler))

    mount = server.run(["mount", "-t", "overlay", "overlay", "-o", "lowerdir=%s:/usr" % (root / "usr"),
                        "/usr"])
    assert mount.returncode == 0, mount.stdout + mount.stderr
    shutil.copytree(str(root / "etc/hostkv"), server.path("/etc/hostkv"))
    # The admin's shell: cobbler on PATH (the wrapper takes cobblerd's Python from its shebang),
    # no PYTHONPATH; the command is the packaged /usr/sbin/hostkv-cobbler.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PATH"] = "%s/bin:/usr/sbin:/usr/bin:/sbin:/bin" % VENV
    which = server.run(["sh", "-c", "command -v hostkv-cobbler"], env=env)
    assert which.stdout.strip() == "/usr/sbin/hostkv-cobbler", which.stdout + which.stderr

    proc = server.run(["hostkv-cobbler", "install"], env=env)
    assert proc.returncode == 0 and "restart cobblerd" in proc.stdout, proc.stdout + proc.stderr
    modules = os.path.join(server.package_dir, "modules", "hostkv")
    with open(server.path(os.path.join(modules, "_lib", "common", "options.py")), "rb") as f:
        assert f.read() == (root / "usr/share/hostkv-cobbler/protocol/hostkv/common/options.py").read_bytes()

    server.restart()
    sync = server.cli(["sync"])
    assert "*** TASK COMPLETE ***" in sync.stdout, sync.stdout + sync.stderr + server.log_tail()

    url = server.url + "/cobbler/pub/hostkv/"
    repomd = ET.fromstring(fetch(url + "repodata/repomd.xml"))
    assert {"primary", "filelists", "other"} <= {d.get("type") for d in repomd.findall(REPO_NS + "data")}
    assert fetch(url + built.agent.name) == built.agent.read_bytes()     # the RPM the package ships
    with open(server.path("/var/log/cobbler/cobbler.log")) as f:
        assert "hostkv: shared rules from %s" % os.path.join(modules, "_lib", "common") in f.read()

    status = server.run(["hostkv-cobbler", "status"], env=env)
    assert status.returncode == 0 and "intact" in status.stdout, status.stdout + status.stderr
    proc = server.run(["hostkv-cobbler", "uninstall"], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not os.path.exists(server.path(modules))
