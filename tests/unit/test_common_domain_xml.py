"""Unit tests of hostkv.common.domain_xml: channel discovery, metadata, enable/disable planning."""
import libvirt
import pytest

from hostkv import protocol
from hostkv.common import domain_xml as dx, entries

LIVE = """<domain type='kvm' id='7'>
  <name>web1</name><uuid>11111111-2222-3333-4444-555555555555</uuid>
  <metadata>
    <hostkv:keys xmlns:hostkv="https://hostkv.org/xmlns/hostkv/1">
      <hostkv:key name="vm.role">web</hostkv:key>
      <hostkv:key name="vm.empty"></hostkv:key>
    </hostkv:keys>
    <other:thing xmlns:other="urn:x"><other:key name="vm.nope">x</other:key></other:thing>
  </metadata>
  <devices>
    <controller type='virtio-serial' index='0'><alias name='virtio-serial0'/></controller>
    <channel type='unix'>
      <source mode='bind' path='/var/lib/libvirt/qemu/channel/target/domain-7-web1/org.hostkv.0'/>
      <target type='virtio' name='org.hostkv.0' state='connected'/>
      <alias name='channel1'/>
    </channel>
    <channel type='unix'>
      <source mode='bind' path='/var/lib/libvirt/qemu/channel/target/domain-7-web1/org.qemu.guest_agent.0'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
  </devices>
</domain>"""


def test_channel_socket_path_from_live_xml():
    assert dx.channel_socket_path(LIVE) == (
        "/var/lib/libvirt/qemu/channel/target/domain-7-web1/org.hostkv.0", None)
    assert dx.channel_socket_path(LIVE, "org.other.0") == (None, None)
    assert dx.find_channels(LIVE)[0]["state"] == "connected"


def test_unservable_channels_name_the_problem():
    pty = LIVE.replace("<channel type='unix'>", "<channel type='pty'>", 1)
    assert "only 'unix'" in dx.channel_socket_path(pty)[1]
    connect = LIVE.replace("<source mode='bind' path='/var/lib/libvirt/qemu/channel/target/domain-7-web1/org.hostkv.0'/>",
                           "<source mode='connect' path='/x'/>")
    assert "mode='bind'" in dx.channel_socket_path(connect)[1]
    inactive = LIVE.replace(" path='/var/lib/libvirt/qemu/channel/target/domain-7-web1/org.hostkv.0'", "")
    assert "no socket path" in dx.channel_socket_path(inactive)[1]


def test_bad_domain_xml_is_a_clear_error():
    with pytest.raises(dx.DomainXMLError, match="does not parse"):
        dx.channel_socket_path("<domain>")
    with pytest.raises(dx.DomainXMLError, match="not a <domain>"):
        dx.channel_socket_path("<network/>")


def test_metadata_only_our_namespace_and_valid_keys():
    assert dx.metadata_from_domain(LIVE) == ({"vm.role": "web", "vm.empty": ""}, [])
    bad = dx.metadata_element({"vm.a": "1"}).replace("</keys>", '<key name="host.x">1</key>'
                                                     '<key name="vm.a">dup</key><junk/></keys>')
    values, problems = dx.parse_metadata_element(bad)
    assert values == {"vm.a": "1"}
    assert len(problems) == 3 and any("host.x" in p for p in problems)
    assert dx.parse_metadata_element("<keys><key") [0] == {}
    assert dx.parse_metadata_element(None) == ({}, [])
    big = "<keys>%s</keys>" % "".join('<key name="vm.k%d">v</key>' % i for i in range(protocol.MAX_KEYS + 5))
    values, problems = dx.parse_metadata_element(big)
    assert len(values) == protocol.MAX_KEYS and problems


def test_metadata_element_roundtrip_and_validation():
    values = {"vm.role": "web <&> \"x\"", "vm.n": "ünï"}
    assert dx.parse_metadata_element(dx.metadata_element(values)) == (values, [])
    with pytest.raises(entries.EntryError):
        dx.metadata_element({"host.x": "1"})
    with pytest.raises(entries.EntryError):
        dx.metadata_element({"vm.x": "y" * (protocol.MAX_VALUE_BYTES + 1)})


def test_metadata_roundtrip_through_libvirt_test_driver():
    conn = libvirt.open("test:///default")
    try:
        dom = conn.lookupByName("test")
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, dx.metadata_element({"vm.role": "web"}),
                        dx.NS_PREFIX, dx.NS, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        assert dx.parse_metadata_element(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, dx.NS, 0)) == (
            {"vm.role": "web"}, [])
        assert dx.metadata_from_domain(dom.XMLDesc(0)) == ({"vm.role": "web"}, [])
    finally:
        conn.close()


BARE = """<domain type='qemu'><name>bare</name><devices>
  <serial type='pty'><target port='0'/></serial><console type='pty'><target type='serial' port='0'/></console>
</devices></domain>"""


def test_plan_enable_adds_controller_only_when_missing():
    plan = dx.plan_enable(BARE)
    assert [k for k, _ in plan] == ["controller", "channel"]
    assert dx.CONTROLLER_ALIAS in plan[0][1] and dx.CHANNEL_ALIAS in plan[1][1]
    no_chan = LIVE.replace("name='org.hostkv.0'", "name='org.other.0'")
    assert [k for k, _ in dx.plan_enable(no_chan)] == ["channel"]
    assert dx.plan_enable(LIVE) == []                       # idempotent
    assert [k for k, _ in dx.plan_enable(no_chan, live=True)] == ["channel"]
    with pytest.raises(dx.NeedsController, match="cannot hot-plug"):
        dx.plan_enable(BARE, live=True)


def test_plan_enable_refuses_what_it_cannot_change():
    with pytest.raises(dx.DomainXMLError, match="lxc"):
        dx.plan_enable(BARE.replace("type='qemu'", "type='lxc'"))
    with pytest.raises(dx.DomainXMLError, match="type 'pty'"):
        dx.plan_enable(LIVE.replace("<channel type='unix'>", "<channel type='pty'>", 1))


def _apply(xml, plan):
    """Simulate attaching the planned devices (what libvirt would do to the XML)."""
    import xml.etree.ElementTree as ET
    root = ET.fromstring(xml)
    for _kind, dev in plan:
        root.find("devices").append(ET.fromstring(dev))
    return ET.tostring(root, encoding="unicode")


def _remove(xml, plan):
    import xml.etree.ElementTree as ET
    root = ET.fromstring(xml)
    devices = root.find("devices")
    wanted = [dx._device_text(ET.fromstring(d)) for _k, d in plan]
    for dev in list(devices):
        if dx._device_text(dev) in wanted:
            devices.remove(dev)
    return ET.tostring(root, encoding="unicode")


def test_disable_removes_exactly_what_enable_added():
    import xml.etree.ElementTree as ET
    canon = lambda x: ET.tostring(ET.fromstring(x), encoding="unicode")  # noqa: E731
    enabled = _apply(BARE, dx.plan_enable(BARE))
    assert dx.plan_enable(enabled) == []
    plan = dx.plan_disable(enabled)
    assert [k for k, _ in plan] == ["channel", "controller"]
    assert canon(_remove(enabled, plan)) == canon(BARE)
    # a controller that was there before (no hostkv alias) stays, and so does the other channel
    plan = dx.plan_disable(LIVE)
    assert [k for k, _ in plan] == ["channel"]
    assert dx.plan_disable(_remove(LIVE, plan)) == []
    # our controller stays while another virtio port still uses it
    other = _apply(BARE, dx.plan_enable(BARE)).replace(
        "</devices>", "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel></devices>")
    assert [k for k, _ in dx.plan_disable(other)] == ["channel"]


# ---------------------------------------------------------------- the metadata model (policy, sources)

LINKED = """<keys>
  <key name="vm.owner">alice</key>
  <key name="vm.role">local-override</key>
  <policy host-keys="opaque"/>
  <source type="cobbler" server="http://cobbler.example/cobbler_api" system="web1" fetched="17.5">
    <key name="vm.role">db</key>
    <key name="vm.tier">3</key>
  </source>
</keys>"""


def test_model_reads_policy_sources_and_applies_local_over_source():
    meta, problems = dx.parse_metadata(LINKED)
    assert problems == []
    assert meta.keys == {"vm.owner": "alice", "vm.role": "local-override"}
    assert meta.policy == "opaque"
    link = meta.source("cobbler")
    assert link.attrs == {"server": "http://cobbler.example/cobbler_api", "system": "web1", "fetched": "17.5"}
    assert link.values == {"vm.role": "db", "vm.tier": "3"}
    values, origins = meta.effective()
    assert values == {"vm.owner": "alice", "vm.role": "local-override", "vm.tier": "3"}
    assert origins == {"vm.owner": "local", "vm.role": "local", "vm.tier": "cobbler"}
    assert meta.shadowed() == {"vm.role": [("cobbler", "db")]}
    assert dx.parse_metadata_element(LINKED) == (values, [])      # what hostkvd serves


def test_model_roundtrips_byte_for_byte_and_through_libvirt():
    meta = dx.HostkvMetadata({"vm.cr": "a\r\nb"}, "none",
                             [dx.SourceLink("cobbler", {"system": "web 1"}, {"vm.x": " <&>\r"})])
    assert dx.parse_metadata(meta.to_xml()) == (meta, [])
    conn = libvirt.open("test:///default")
    try:
        dom = conn.lookupByName("test")
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, meta.to_xml(), dx.NS_PREFIX, dx.NS,
                        libvirt.VIR_DOMAIN_AFFECT_LIVE)
        assert dx.domain_metadata(dom.XMLDesc(0)) == (meta, [])
        start, end = LIVE.index("<hostkv:keys"), LIVE.index("</hostkv:keys>") + len("</hostkv:keys>")
        whole = LIVE[:start] + meta.to_xml(namespaced=True) + LIVE[end:]
        assert dx.domain_metadata(whole) == (meta, [])
    finally:
        conn.close()


def test_model_refuses_to_write_what_it_could_not_read_back():
    for bad in (dx.HostkvMetadata(policy="some"),
                dx.HostkvMetadata(sources=[dx.SourceLink("Cobbler")]),
                dx.HostkvMetadata(sources=[dx.SourceLink("cobbler", {"system": "a\nb"})]),
                dx.HostkvMetadata(sources=[dx.SourceLink("cobbler", {"type": "x"})]),
                dx.HostkvMetadata(sources=[dx.SourceLink("cobbler"), dx.SourceLink("cobbler")])):
        with pytest.raises(dx.DomainXMLError):
            bad.to_xml()
    with pytest.raises(entries.EntryError):
        dx.HostkvMetadata(sources=[dx.SourceLink("cobbler", values={"host.x": "1"})]).to_xml()


def test_model_reports_and_leaves_out_broken_parts():
    text = LINKED.replace('host-keys="opaque"', 'host-keys="some"').replace(
        '<key name="vm.tier">3</key>', '<key name="host.tier">3</key><junk/>')
    meta, problems = dx.parse_metadata(text)
    assert meta.policy is None and meta.source("cobbler").values == {"vm.role": "db"}
    assert len(problems) == 3, problems
    assert any("host-keys='some'" in p for p in problems)
    assert any("source cobbler key 'host.tier'" in p for p in problems)
    bad_source = dx.parse_metadata(LINKED.replace('system="web1"', 'system="a&#10;b"'))
    assert bad_source[0].source("cobbler") is None and "ignored hostkv metadata source cobbler" in bad_source[1][0]


def test_source_keys_count_toward_the_key_limit():
    many = dict(("vm.k%d" % i, "v") for i in range(protocol.MAX_KEYS))
    meta = dx.HostkvMetadata({"vm.local": "1"}, sources=[dx.SourceLink("cobbler", values=many)])
    values, origins = meta.effective()
    assert len(values) == protocol.MAX_KEYS and origins["vm.local"] == "local"
