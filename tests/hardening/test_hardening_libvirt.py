"""With real libvirtds (issue 6, items 6 and 7): two simulated hosts (tests/harness/libvirt_hosts.py),
each running hostkvd with the libvirt source.

* a guest with the hostkv channel live-migrates A -> B -> A -> B while a ``hostkv watch`` loop
  runs in it: it lands on the right host each time and the watch saw every change in order;
* a domain WITHOUT the channel runs on host A all along: hostkvd never serves it and its live
  and persistent XML are unchanged at the end;
* ``hostkvctl enable`` (its enable() core, as the CLI calls it) on a domain whose XML it cannot
  parse changes nothing - also when the failure comes after the live view was already changed.
"""

import json
import os
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET

import pytest

from hostkv.common import domain_xml as dx
from hostkv.hostkvctl import enable as en
from tests.harness import libvirt_hosts as lh
from tests.harness.guest_image import build_guest_image

pytestmark = [pytest.mark.libvirt, pytest.mark.vm]

MIGRATIONS = 3
WATCH_LOOP = (
    "s=%d; while :; do out=$(hostkv watch host.hostname --since $s --json --timeout 600) || break; "
    "echo \"$out\" >> /tmp/lv.watch; s=$(echo \"$out\" | sed 's/.*\"seq\": \\([0-9]*\\).*/\\1/'); done")


def canonical(xml):
    """The XML minus the guest-side open state of channels (changes when the guest opens a port)."""
    root = ET.fromstring(xml)
    for target in root.findall("./devices/channel/target"):
        target.attrib.pop("state", None)
    return ET.tostring(root, encoding="unicode")


def labels(host):
    reply = host.hostkvds[-1].control({"op": "status"})
    assert reply["ok"], reply
    return set(ch["label"] for ch in reply["status"]["channels"])


@pytest.fixture(scope="module")
def world():
    image = build_guest_image()
    base = tempfile.mkdtemp(prefix="hostkv-hard-lv-")
    os.chmod(base, 0o755)
    work = lh.make_world_readable_dir("hostkv-hard-lvw-")
    hosts = {}
    try:
        hosts["a"] = lh.LibvirtHost("a", os.path.join(base, "a"), hostname="hard-a").start()
        hosts["b"] = lh.LibvirtHost("b", os.path.join(base, "b"), hostname="hard-b",
                                    cache_from=hosts["a"]).start()
        for name, host in hosts.items():
            host.start_hostkvd("[host]\nhost.rack = r%s\n" % name)
        plain = lh.start_guest(hosts["a"], "plain", image, work, hostkv_channel=False)
        guest = lh.start_guest(hosts["a"], "pp", image, work, metadata_values={"vm.role": "web"},
                               persistent=False)
        yield {"hosts": hosts, "guest": guest, "plain": plain}
    finally:
        for host in hosts.values():
            host.stop()
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def test_libvirt_migrations_with_a_watch_and_a_domain_without_the_channel_untouched(world):
    a, b = world["hosts"]["a"], world["hosts"]["b"]
    g, plain = world["guest"], world["plain"]
    import libvirt
    plain_live = canonical(plain.dom().XMLDesc(0))
    plain_config = canonical(plain.dom().XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    g.wait_booted(120)
    g.wait_key("host.hostname", a.hostname, timeout=30)
    seq = g.published()["seq"]
    g.exec.run(sh="(%s) </dev/null >/dev/null 2>&1 &" % (WATCH_LOOP % seq))
    time.sleep(0.3)
    expected, settle = [], []
    for i in range(MIGRATIONS):
        dst = b if g.host is a else a
        t0 = time.monotonic()
        lh.migrate(g.dom(), dst.conn)
        g.host = dst
        settle.append(g.wait_key("host.hostname", dst.hostname, timeout=20))
        expected.append(dst.hostname)
        assert g.key("host.rack") == "r" + dst.name and g.key("vm.role") == "web"
        assert "pp" in labels(dst) and "plain" not in labels(dst)
    lh.wait_for(lambda: g.exec.run(sh="wc -l < /tmp/lv.watch")["stdout"].strip() == str(MIGRATIONS), 15,
                what="the watch to log every change")
    seen = [json.loads(l) for l in g.exec.run(cmd=["cat", "/tmp/lv.watch"])["stdout"].splitlines() if l.strip()]
    assert [s["value"] for s in seen] == expected
    assert [s["seq"] for s in seen] == sorted(set(s["seq"] for s in seen))
    # the domain without the channel: never served, never changed
    assert "plain" not in labels(a)
    assert canonical(plain.dom().XMLDesc(0)) == plain_live
    assert canonical(plain.dom().XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) == plain_config
    print("\nlibvirt: %d migrations, landing host seen %.2f s max after migrate() returned; watch saw "
          "%d/%d changes in order; domain without channel untouched" % (MIGRATIONS, max(settle), len(seen),
                                                                        MIGRATIONS))


class UnparseableView(object):
    """A real domain whose XMLDesc returns broken XML for one view (the rest goes to libvirt)."""

    def __init__(self, dom, broken_flags):
        self._dom = dom
        self._broken = broken_flags
        self.attached = []

    def XMLDesc(self, flags=0):
        if flags == self._broken:
            return "<domain type='kvm'><name>plain</name><devices><channel type='unix'>"   # truncated
        return self._dom.XMLDesc(flags)

    def attachDeviceFlags(self, xml, flags):
        self.attached.append(flags)
        return self._dom.attachDeviceFlags(xml, flags)

    def __getattr__(self, name):
        return getattr(self._dom, name)


def test_enable_on_a_domain_whose_xml_cannot_be_parsed_changes_nothing(world):
    import libvirt
    plain = world["plain"]
    dom = plain.dom()
    lh.wait_for(lambda: dom.isActive(), 10, what="plain to run")
    before = (canonical(dom.XMLDesc(0)), canonical(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
    assert not dx.find_channels(before[0]) and not dx.find_channels(before[1])
    # 1. the live view does not parse: refused before anything is attached
    broken = UnparseableView(dom, 0)
    with pytest.raises(en.CannotChange) as err:
        en.enable(broken)
    assert "does not parse" in str(err.value) and broken.attached == []
    # 2. live parses and is changed, then the persistent view does not parse: rolled back
    broken = UnparseableView(dom, libvirt.VIR_DOMAIN_XML_INACTIVE)
    with pytest.raises(en.CannotChange) as err:
        en.enable(broken)
    assert "does not parse" in str(err.value), err.value
    assert broken.attached == [libvirt.VIR_DOMAIN_AFFECT_LIVE]        # it really got that far
    lh.wait_for(lambda: not dx.find_channels(dom.XMLDesc(0)), 15, what="the live channel to be undone")
    after = (canonical(dom.XMLDesc(0)), canonical(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
    assert after[1] == before[1]
    assert after[0] == before[0], "live XML changed:\n%s\n---\n%s" % (before[0], after[0])
    assert "plain" not in labels(world["hosts"]["a"])
