"""Issue 10.2, the host's half, with real libvirtd + a real QEMU guest (our agent inside):
a change that would put a served guest over the 256-key limit is refused up front naming the
guest (`host set`, `vm set`); metadata edited by hand past hostkvctl (as `virsh metadata` does)
cannot be refused, so hostkvd logs it once naming the guest and the limit, `hostkvctl status`
shows the channel as undeliverable, and `host set` never counts that guest as pushed."""
import libvirt
import pytest

from hostkv.common import domain_xml
from tests.harness import libvirt_hosts as lh
from tests.libvirt.helpers import channels

pytestmark = [pytest.mark.libvirt, pytest.mark.vm]

HOST_KEYS = ["lk%03d=v" % i for i in range(230)]       # + host.hostname, host.fqdn, host.rack = 233


def test_over_limit_refused_up_front_or_shown_undeliverable(lv_hosts, guests):
    a = lv_hosts["a"]
    hostkvd = a.hostkvds[-1]
    g = guests.start(a, "lim1", metadata_values={"vm.k%02d" % i: "v" for i in range(20)})
    g.wait_booted()
    g.wait_key("vm.k19", "v", timeout=30)
    try:
        a.hostkvctl(["host", "set"] + HOST_KEYS, check=True)          # 253 keys: fine
        g.wait_key("host.lk229", "v", timeout=20)
        lh.wait_for(lambda: channels(a)["lim1"]["serving"], 20, what="lim1 serving")
        res = a.hostkvctl(["host", "set", "x1=v", "x2=v", "x3=v", "x4=v"])
        assert res.returncode == 1 and "lim1 (257 keys, the limit is 256)" in res.stderr, res
        assert "nothing changed" in res.stderr
        res = a.hostkvctl(["vm", "set", "lim1"] + ["more%d=v" % i for i in range(4)])
        assert res.returncode == 1 and "it would put lim1 over a limit" in res.stderr, res
        assert a.hostkvctl(["vm", "get", "lim1", "more0"]).returncode == 1     # nothing written
        # by hand, past hostkvctl: 24 vm keys in the live metadata
        mark = hostkvd.log_size()
        dom = a.conn.lookupByName("lim1")
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                        domain_xml.metadata_element({"vm.k%02d" % i: "v" for i in range(24)}),
                        domain_xml.NS_PREFIX, domain_xml.NS, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        hostkvd.wait_log("lim1: snapshot undeliverable", timeout=20, after=mark)
        assert "257 keys, the limit is 256" in hostkvd.log()[mark:]
        st = a.hostkvctl(["status"], check=True).stdout
        row = [l for l in st.splitlines() if l.strip().startswith("lim1 ")]
        assert row and "undeliverable: " in row[0] and "the limit is 256" in row[0], st
        assert not channels(a)["lim1"]["serving"]
        # a change that keeps it over is refused too; one that brings it back under is pushed
        res = a.hostkvctl(["host", "set", "lk000=w"])
        assert res.returncode == 1 and "lim1" in res.stderr, res
        res = a.hostkvctl(["host", "unset", "lk000", "lk001"], check=True)
        assert "pushed to 1 guest(s)" in res.stdout and "undeliverable" not in res.stdout, res
        g.wait_key("vm.k23", "v", timeout=20)
        assert channels(a)["lim1"]["describe"] == "serving"
    finally:
        left = [k for k in a.hostkvds[-1].control({"op": "status"})["status"]["host_values"]
                if k.startswith("host.lk")]
        if left:
            a.hostkvctl(["host", "unset"] + left)
