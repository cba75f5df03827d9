"""The kickstart path: Cobbler renders the %post from the hostkv_agent snippet (profile with
hostkv_enabled=1) and that %post, chrooted into the guest's root, installs the RPM with rpm.

Deviation from EL, the least Debian forces (tests/harness/kickstart_dnf_adapter.py): `dnf` is an
adapter that resolves hostkv-agent in the repo the %post configured and runs the root's real
`rpm -i --nodeps` -- --nodeps because python3 and /bin/sh are in dpkg's database, not rpm's.
Everything else is real: Cobbler's rendering, the snippet's shell, rpm's transaction and
database (/var/lib/rpm, as on EL), the package's scriptlets, systemctl in a chroot.
"""
import os

import pytest

from tests.harness.kickstart_post import rpm_in_root

pytestmark = [pytest.mark.real_os, pytest.mark.cobbler]


def test_kickstart_post_installs_and_enables_the_agent_rpm(realos_install):
    inst = realos_install
    post, root = inst.post, inst.root
    assert "# hostkv-agent: begin" in inst.kickstart, inst.kickstart
    assert post.rc == 0, "%s\n--- ks-post.log:\n%s" % (post.output, post.ks_post_log)
    assert post.install_log and "hostkv: finished with status 0" in post.install_log, \
        "%s\n--- ks-post.log:\n%s" % (post.install_log, post.ks_post_log)
    assert "scriptlet failed" not in (post.ks_post_log or ""), post.ks_post_log
    assert post.calls == ["dnf -y install hostkv-agent"], post.calls
    # in the root's own rpm database, the exact RPM `make rpms` built
    q = rpm_in_root(root, "-q", "--qf", "%{NVRA}", "hostkv-agent")
    assert q.returncode == 0, q.stdout + q.stderr
    assert q.stdout == os.path.basename(str(inst.rpms.agent))[:-len(".rpm")]
    verify = rpm_in_root(root, "-V", "--nodeps", "hostkv-agent")      # (--nodeps: see above)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # the scriptlets ran: enabled (%post), byte-compiled by the guest's python3 (%posttrans)
    assert os.path.islink(os.path.join(root, "etc/systemd/system/multi-user.target.wants/hostkv-agent.service"))
    pycache = os.path.join(root, "usr/lib/hostkv-agent/hostkv/agent/__pycache__")
    assert any(n.endswith(".pyc") for n in os.listdir(pycache))
    # the repo the snippet wrote points at the Cobbler that rendered it
    with open(os.path.join(root, "etc/yum.repos.d/hostkv.repo")) as f:
        assert "baseurl=http://127.0.0.1:" in f.read()
