"""Live migration A -> B -> A between two real libvirt hosts, each with its own hostkvd, in both
libvirt layouts (modular as on EL9/EL10, monolithic libvirtd as on EL8)."""
import pytest

from tests.harness import libvirt_hosts as lh
from tests.libvirt.helpers import channels

pytestmark = [pytest.mark.libvirt, pytest.mark.vm]


@pytest.mark.parametrize("layout", lh.LAYOUTS)
def test_live_migration_there_and_back(lv_pairs, guests, layout):
    hosts = lv_pairs.pair(layout)
    a, b = hosts["a"], hosts["b"]
    g = guests.start(a, "mig1", metadata_values={"vm.role": "web", "vm.app": "shop"}, persistent=False)
    g.wait_booted()
    g.wait_key("host.hostname", a.hostname, timeout=20)
    for dst in (b, a):
        src = g.host
        lh.migrate(g.dom(), dst.conn)
        g.host = dst
        g.wait_key("host.hostname", dst.hostname, timeout=10)
        assert g.key("host.rack") == "r" + dst.name
        assert (g.key("vm.role"), g.key("vm.app")) == ("web", "shop")
        assert g.published()["host_id"] == dst.host_uuid      # libvirt's host UUID of the landing host
        cli = g.exec.run(cmd=["hostkv", "get", "host.hostname"])
        assert cli["stdout"].strip() == dst.hostname, cli
        assert "mig1" in channels(dst) and channels(dst)["mig1"]["path"] == g.hostkv_socket()
        # the landing host counts it as served only once the guest has spoken there (issue 10.3b)
        lh.wait_for(lambda: channels(dst)["mig1"]["serving"], 30,
                    what="the destination to see the migrated guest speak")
        lh.wait_for(lambda: "mig1" not in channels(src), 5, what="source hostkvd to let go of mig1")
