"""Small helpers shared by the libvirt tests (status lookups on a host's hostkvd)."""
import xml.etree.ElementTree as ET


def channels(host):
    """``{label: channel status dict}`` from the host's running hostkvd."""
    reply = host.hostkvds[-1].control({"op": "status"})
    assert reply["ok"], reply
    return dict((ch["label"], ch) for ch in reply["status"]["channels"])


def canonical(xml):
    return ET.tostring(ET.fromstring(xml), encoding="unicode")
