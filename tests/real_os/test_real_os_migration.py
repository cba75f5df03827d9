"""Live migration of the real-OS guest between the two libvirt hosts: it reads the landing host.

Both "hosts" run on this machine, so the guest's disk overlay is really shared storage (see
tests/harness/real_os_guest.py for why VIR_MIGRATE_UNSAFE is passed).
"""
import pytest

from tests.harness import libvirt_hosts as lh
from tests.harness import real_os_guest as rg

pytestmark = [pytest.mark.real_os, pytest.mark.libvirt, pytest.mark.vm]


def test_live_migration_guest_reads_the_landing_host(realos_hosts, realos_guests):
    a, b = realos_hosts["a"], realos_hosts["b"]
    g = realos_guests.start(a, "ro-mig", metadata_values={"vm.role": "migrant"})
    g.wait_booted()
    g.wait_key("host.hostname", a.hostname, timeout=60)
    boot_id = g.boot_id()
    for dst in (b, a):
        src = g.host
        rg.migrate(g, dst)
        g.wait_key("host.hostname", dst.hostname, timeout=60)
        pub = g.published()
        assert pub["host_id"] == dst.host_uuid and pub["stale"] is False, pub
        assert g.key("host.rack") == "r" + dst.name and g.key("vm.role") == "migrant"
        cli = g.as_user("hostkv get host.hostname")
        assert cli["rc"] == 0 and cli["stdout"].strip() == dst.hostname, cli
        assert g.sh("systemctl is-active hostkv-agent")["stdout"].strip() == "active"
        assert g.boot_id() == boot_id                       # live: the same boot, not a restart
        lh.wait_for(lambda: not src.conn.listAllDomains(), 30, what="the source to let go of ro-mig")
    lines = g.journal("hostkv-agent")
    assert any("host changed from" in m for _p, m in lines), lines
