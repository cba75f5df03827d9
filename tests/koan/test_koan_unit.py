"""Fast checks of hostkv-koan's pure parts, against the real koan 3.0.1 functions they wrap.

(The real thing - cobblerd, koan, virt-install, libvirtd, QEMU - is in test_koan_e2e.py.)"""

import pytest

from hostkv_koan import channel, fixes, meta   # koan_patch/ is on pytest's pythonpath


# ---------------------------------------------------------------- meta

def test_parse_meta_is_the_inverse_of_cobblers_flattening():
    from cobbler.utils import dict_to_string
    original = {"tree": "http://x/y", "hostkv_enabled": "1", "hostkv_vm_motd": "hello world",
                "hostkv_vm_empty": ""}
    parsed = meta.parse_meta(dict_to_string(original))
    assert parsed == {"tree": "http://x/y", "hostkv_enabled": "1",
                      "hostkv_vm_motd": "hello world", "hostkv_vm_empty": None}


def test_plan_enabled_with_keys():
    plan = meta.plan_from_meta("tree=http://x hostkv_enabled=1 hostkv_vm_role=web "
                               "hostkv_vm_rack.row=r1-2 hostkv_other=ignored ")
    assert plan.enabled is True
    assert plan.values == {"vm.role": "web", "vm.rack.row": "r1-2"}


@pytest.mark.parametrize("text,enabled", [
    ("", False), ("tree=x", False), ("hostkv_enabled", False), ("hostkv_enabled=0", False),
    ("hostkv_enabled=False", False), ("hostkv_enabled=no", False), ("hostkv_enabled=true", True),
    ("hostkv_enabled=True", True), ("hostkv_enabled=yes", True), ("hostkv_enabled=on", True),
])
def test_enabled_values(text, enabled):
    assert meta.plan_from_meta(text).enabled is enabled


def test_disabled_guest_ignores_even_bad_keys():
    plan = meta.plan_from_meta("hostkv_enabled=0 hostkv_vm_r@le=x")
    assert plan.enabled is False and plan.values == {}


@pytest.mark.parametrize("text,needle", [
    ("hostkv_enabled=maybe", "hostkv_enabled='maybe'"),
    ("hostkv_enabled=1 hostkv_vm_r@le=web", "hostkv_vm_r@le (hostkv key vm.r@le)"),   # the validator's words
    ("hostkv_enabled=1 hostkv_vm_=web", "hostkv_vm_ (hostkv key vm.)"),
    ("hostkv_enabled=1 hostkv_vm_big=" + "x" * 4097, "4096"),
    ("hostkv_enabled=1 hostkv_vm_a=1 hostkv_vm_a=2", "hostkv_vm_a is set 2 times"),
    ("hostkv_enabled=1 hostkv_enabled=1", "hostkv_enabled is set 2 times"),
    ("hostkv_enabled=1 hostkv_vm_a='unbalanced", "does not parse"),
])
def test_bad_meta_names_the_key(text, needle):
    with pytest.raises(meta.HostkvMetaError) as err:
        meta.plan_from_meta(text)
    assert needle in str(err.value)


def test_too_many_keys():
    text = "hostkv_enabled=1 " + " ".join("hostkv_vm_k%d=v" % i for i in range(257))
    with pytest.raises(meta.HostkvMetaError) as err:
        meta.plan_from_meta(text)
    assert "256" in str(err.value)


def test_profile_data_dict_meta_and_missing_meta():
    assert meta.plan_from_profile_data({"autoinstall_meta": {"hostkv_enabled": True,
                                                             "hostkv_vm_role": "db"}}).values \
        == {"vm.role": "db"}
    assert meta.plan_from_profile_data({}).enabled is False
    assert meta.plan_from_profile_data(None).enabled is False


# ---------------------------------------------------------------- fixes (pure parts)

@pytest.mark.parametrize("size,expected", [
    (10.0, 10), ("10.0", 10), ("10", 10), (0.5, 0.5), ("0", 0), ("x", None), ("", None),
    ("-1", None), ("nan", None), (None, None),
])
def test_disk_size(size, expected):
    assert fixes.disk_size(size) == expected


@pytest.mark.parametrize("server,port,expected", [
    ("cobbler.example", "8080", "cobbler.example:8080"),
    ("127.0.0.1", "81", "127.0.0.1:81"),
    ("cobbler.example:9", "8080", "cobbler.example:9"),
    ("fd00::1", "80", "[fd00::1]:80"),
    ("[fd00::1]", "80", "[fd00::1]:80"),
])
def test_with_port(server, port, expected):
    assert fixes._with_port(server, port) == expected


def test_get_data_fix_sets_the_rendered_autoinstall_url():
    data = {"name": "web1", "http_server": "10.0.0.1:81", "autoinstall": "sample.ks",
            "kickstart": "sample.ks"}
    wrapped = fixes.wrap_get_data(lambda self, what, name=None: dict(data))
    assert wrapped(None, "system", "web1")["autoinst"] == \
        "http://10.0.0.1:81/cblr/svc/op/autoinstall/system/web1"
    assert "autoinst" not in wrapped(None, "systems")          # lists are left alone
    given = fixes.wrap_get_data(lambda self, what, name=None: dict(data, autoinst="http://a/b"))
    assert given(None, "profile", "p")["autoinst"] == "http://a/b"


# ---------------------------------------------------------------- against koan's own code

@pytest.fixture(scope="module")
def virtinstall():
    import koan.virtinstall   # runs virt-install --version: real virtinst 4.1
    return koan.virtinstall


def test_sanitize_nics_fix_falls_back_to_the_profile_bridge(virtinstall):
    nics = {"eth0": {"interface_type": "na", "mac_address": "52:54:00:00:00:01",
                     "virt_bridge": "<<inherit>>"}}
    assert virtinstall._sanitize_nics(nics, None, "br0", None) == \
        [("<<inherit>>", "52:54:00:00:00:01")]                                  # the bug
    fixed = fixes.wrap_sanitize_nics(virtinstall._sanitize_nics)
    assert fixed(nics, None, "br0", None) == [("br0", "52:54:00:00:00:01")]
    assert nics["eth0"]["virt_bridge"] == "<<inherit>>"                        # input not mutated


def _kwargs(autoinstall_meta):
    return dict(name="g1", ram=256, disks=[("/tmp/g1-disk0", 2, "raw")], uuid=None,
                extra="ks=http://x/ks", vcpus=1, arch=None, gfx_type=None, fullvirt=True,
                bridge=None, virt_type="qemu", virt_auto_boot=False, virt_pxe_boot=False,
                profile_data={"install_tree": "http://x/tree/", "breed": "redhat",
                              "os_version": "rhel6", "virt_bridge": "br0",
                              "autoinstall_meta": autoinstall_meta})


def test_build_commandline_unchanged_without_hostkv(virtinstall):
    stock = virtinstall.build_commandline("qemu:///system", **_kwargs("tree=http://x "))
    wrapped = channel.wrap_build_commandline(virtinstall.build_commandline)
    channel.PENDING.take()
    assert wrapped("qemu:///system", **_kwargs("tree=http://x ")) == stock
    assert wrapped("qemu:///system", **_kwargs("hostkv_enabled=0 hostkv_vm_role=web ")) == stock
    assert channel.PENDING.take() is None


def test_build_commandline_adds_the_channel(virtinstall):
    stock = virtinstall.build_commandline("qemu:///system", **_kwargs("tree=http://x "))
    wrapped = channel.wrap_build_commandline(virtinstall.build_commandline)
    argv = wrapped("qemu:///system", **_kwargs("hostkv_enabled=1 hostkv_vm_role=web "))
    assert argv == stock + ["--channel", "unix,target_type=virtio,name=org.hostkv.0"]
    uri, name, plan = channel.PENDING.take()
    assert (uri, name, plan.values) == ("qemu:///system", "g1", {"vm.role": "web"})


def test_bad_key_is_a_koan_info_exception(virtinstall):
    from koan.cexceptions import InfoException
    wrapped = channel.wrap_build_commandline(virtinstall.build_commandline)
    with pytest.raises(InfoException) as err:
        wrapped("qemu:///system", **_kwargs("hostkv_enabled=1 hostkv_vm_a%b=1 "))
    assert "hostkv_vm_a%b" in str(err.value)        # a '%' survives koan's ``value % args``


def test_the_guest_is_linked_to_the_cobbler_record_it_came_from():
    import xmlrpc.client
    from hostkv.common import domain_xml

    class Koan(object):
        server, port, profile, system = "cobbler.example", 8080, None, "web1"
        xmlrpc_server = xmlrpc.client.ServerProxy("https://cobbler.example:8443/cobbler_api")

    link = channel.cobbler_link(Koan(), {"name": "web1"})
    assert link.attrs == {"server": "https://cobbler.example:8443/cobbler_api", "system": "web1"}
    Koan.xmlrpc_server, Koan.profile = None, "el9"
    assert channel.cobbler_link(Koan(), {"name": "el9"}).attrs == {
        "server": "http://cobbler.example:8080/cobbler_api", "profile": "el9"}
    Koan.profile, Koan.system = None, None
    assert channel.cobbler_link(Koan(), {}) is None
    meta = domain_xml.parse_metadata(channel.metadata_for({"vm.role": "web"}, link).to_xml())[0]
    assert meta.keys == {} and meta.source("cobbler").values == {"vm.role": "web"}
    assert meta.effective()[0] == {"vm.role": "web"}
    assert channel.metadata_for({"vm.role": "web"}, None).keys == {"vm.role": "web"}
