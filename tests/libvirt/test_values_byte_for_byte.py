"""One value rule on every path, against the real libvirtd: every value hostkv.common.entries allows
(CR included) survives libvirt's metadata byte for byte - virDomainSetMetadata, the metadata API,
XMLDesc and the definition libvirt saves to disk - and reaches the guest byte for byte; anything
else is refused by hostkvctl (host set and vm set alike) with the one message, before libvirt or
hostkvd sees it."""
import os

import libvirt
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hostkv.common import domain_xml, entries
from hostkv.hostkvctl import vm_keys
from tests.harness import libvirt_hosts as lh

pytestmark = pytest.mark.libvirt

# Every XML 1.0 character class the rule allows, weighted towards the ones XML parsers touch.
ALLOWED = st.text(st.one_of(
    st.sampled_from("\r\n\t \x7f\x85\u2028\u2029\ufffd&<>\"']"),
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\ufffe\uffff",
                  min_codepoint=0x20),
), max_size=60)
TRICKY = {"vm.cr": "x\r\ny\r", "vm.lone-cr": "\r", "vm.crlf": "\r\n\r\n", "vm.blank": "   ",
          "vm.tab": "\t", "vm.lines": "\n\nend\n", "vm.pad": "  both  ", "vm.empty": "",
          "vm.markup": "<a href=\"x\">&amp;</a> ]]>", "vm.c1": "\x85\x9f\x7f", "vm.sep": "a\u2028b\u2029",
          "vm.astral": "\U0001f600\U0010fffd"}


@pytest.fixture(scope="module")
def defined(lv_hosts):
    """A persistent, never started domain on host a (metadata edits need no running guest)."""
    a = lv_hosts["a"]
    dom = a.conn.defineXML(lh.domain_xml("hk-values", hostkv_channel=True, exec_channel=False))
    yield a, dom
    dom.undefine()


def _all_views(host, dom):
    """The vm.* values as each reader sees them: the metadata API, XMLDesc, the saved definition."""
    meta, problems = vm_keys.get(dom, config=True)
    assert problems == []
    api = meta.effective()[0]
    xml = domain_xml.metadata_from_domain(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    with open(os.path.join(host.basedir, "etc", "qemu", dom.name() + ".xml"), encoding="utf-8") as f:
        saved = domain_xml.metadata_from_domain(f.read())
    return api, xml[0], saved[0]


def test_tricky_values_survive_libvirt_byte_for_byte(defined):
    host, dom = defined
    vm_keys.set_keys(dom, TRICKY)
    for view in _all_views(host, dom):
        assert view == TRICKY


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ALLOWED)
def test_every_allowed_value_survives_libvirt(defined, value):
    host, dom = defined
    entries.validate_value("vm.p", value)          # the strategy stays inside the rule
    vm_keys.set_keys(dom, {"vm.p": value})
    for view in _all_views(host, dom):
        assert view.get("vm.p") == value


@pytest.mark.parametrize("value, char, position", [
    ("a\x01b", "U+0001 (a control character)", 2), ("ok\x1b[0m", "U+001B (a control character)", 3),
    ("x\x0cy", "U+000C (a control character)", 2),      # (NUL cannot be on a command line at all)
])
def test_hostkvctl_refuses_what_xml_cannot_hold_with_one_message(defined, value, char, position):
    host, dom = defined
    vm_keys.set_keys(dom, {"vm.kept": "1"})
    before = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    status_before = host.hostkvds[-1].control({"op": "status"})["status"]["host_values"]
    messages = []
    for args, key in ((["host", "set", "bad=" + value], "host.bad"),
                      (["vm", "set", dom.name(), "bad=" + value], "vm.bad")):
        res = host.hostkvctl(args)
        assert res.returncode == 2, res.stdout + res.stderr
        expected = "hostkvctl: value of %s has %s at character %d; %s" % (key, char, position, entries.VALUE_RULE)
        assert res.stderr.strip() == expected
        assert "PCDATA" not in res.stderr                    # not libvirt's parser error any more
        messages.append(res.stderr.replace(key, "KEY"))
    assert messages[0] == messages[1]                        # one message for both scopes
    assert dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == before
    assert host.hostkvds[-1].control({"op": "status"})["status"]["host_values"] == status_before


@pytest.mark.vm
def test_a_running_guest_gets_every_value_byte_for_byte(lv_hosts, guests):
    """vm set (libvirt metadata, live) and host set (hostkvd's config file) deliver CR, CR LF,
    white space and the rest unaltered to /run/hostkv/keys/ in the guest."""
    a = lv_hosts["a"]
    g = guests.start(a, "hk-bytes", metadata_values={"vm.boot": "x\r\ny\r"})
    g.wait_booted()
    g.wait_key("vm.boot", "x\r\ny\r", timeout=20)
    args = ["%s=%s" % (k[3:], v) for k, v in sorted(TRICKY.items())]
    a.hostkvctl(["vm", "set", "hk-bytes"] + args, check=True)
    a.hostkvctl(["host", "set", "cr=a\rb\r\n", "pad=  p  "], check=True)
    try:
        for key, value in sorted(TRICKY.items()):
            g.wait_key(key, value, timeout=10)
        g.wait_key("host.cr", "a\rb\r\n", timeout=10)
        g.wait_key("host.pad", "  p  ", timeout=10)
        got = a.hostkvctl(["vm", "get", "hk-bytes", "--json"], check=True).stdout
        import json
        assert {k: v for k, v in json.loads(got)["values"].items() if k in TRICKY} == TRICKY
    finally:
        a.hostkvctl(["host", "unset", "cr", "pad"])
