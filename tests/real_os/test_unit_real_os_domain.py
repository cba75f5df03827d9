"""Fast checks of the real-OS guest's domain model and image inputs (no guest is booted)."""
import xml.etree.ElementTree as ET

from hostkv.hostkvd import domain_xml as dx
from tests.harness import real_os_image
from tests.harness.real_os_guest import RealOsDomain


def test_domain_model_boots_the_kernel_on_the_disk_with_both_channels():
    d = RealOsDomain("rg1", "/k/vmlinux", "/k/initrd.cpio", "/d/rg1.qcow2", "/d/rg1.log",
                     metadata_values={"vm.role": "x<&>"}, domain_type="qemu")
    xml = d.xml()
    root = ET.fromstring(xml)
    assert root.get("type") == "qemu" and root.findtext("name") == "rg1"
    assert root.findtext("os/kernel") == "/k/vmlinux" and root.findtext("os/initrd") == "/k/initrd.cpio"
    assert "root=/dev/vda" in root.findtext("os/cmdline") and "systemd.hostname=rg1" in root.findtext("os/cmdline")
    assert root.findtext("on_reboot") == "restart"
    disk = root.find("devices/disk")
    assert disk.find("source").get("file") == "/d/rg1.qcow2"
    assert disk.find("driver").attrib == {"name": "qemu", "type": "qcow2", "cache": "none"}
    assert disk.find("target").attrib == {"dev": "vda", "bus": "virtio"}
    names = [c.find("target").get("name") for c in root.findall("devices/channel")]
    assert names == ["org.hostkv.test.0", "org.hostkv.0"]
    assert dx.metadata_from_domain(xml) == ({"vm.role": "x<&>"}, [])


def test_domain_model_without_the_hostkv_channel_keeps_the_controller():
    root = ET.fromstring(RealOsDomain("rg2", "/k", "/i", "/d", "/c", hostkv_channel=False,
                                      domain_type="qemu").xml())
    assert [c.find("target").get("name") for c in root.findall("devices/channel")] == ["org.hostkv.test.0"]
    assert root.find("devices/controller").get("type") == "virtio-serial"
    assert root.find("metadata") is None


def test_cache_key_changes_with_the_exec_server(monkeypatch, tmp_path):
    before = real_os_image.cache_key()
    changed = tmp_path / "exec_server.py"
    changed.write_text(open(real_os_image.EXEC_SERVER).read() + "\n# changed\n")
    monkeypatch.setattr(real_os_image, "EXEC_SERVER", str(changed))
    assert real_os_image.cache_key() != before
