"""hostkvd and hostkvctl pick the libvirt URI by one rule (hostkv.common.paths.libvirt_uri):
--connect, else $LIBVIRT_DEFAULT_URI, else qemu:///system.  The real hostkvd process is run
against libvirt's test driver (test:///default), named only by the environment variable."""
import io
import os

from hostkv.common import paths
from hostkv.hostkvctl import cli
from tests.harness.hostkvd_proc import HostkvdProcess


def test_libvirt_uri_rule():
    assert paths.libvirt_uri(None, {}) == "qemu:///system"
    assert paths.libvirt_uri(None, {"LIBVIRT_DEFAULT_URI": "test:///default"}) == "test:///default"
    assert paths.libvirt_uri("qemu:///session", {"LIBVIRT_DEFAULT_URI": "test:///default"}) == "qemu:///session"
    assert paths.libvirt_uri(None, {"LIBVIRT_DEFAULT_URI": ""}) == "qemu:///system"


def test_hostkvd_follows_LIBVIRT_DEFAULT_URI(tmp_path, monkeypatch):
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "test:///default")
    d = HostkvdProcess(tmp_path, config_text="", host_id="uri-test")
    d.start()
    try:
        d.wait_log("libvirt test:///default: connected", timeout=20)
    finally:
        d.stop()
    assert "qemu:///system" not in d.log()


def test_hostkvctl_follows_LIBVIRT_DEFAULT_URI(monkeypatch):
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "test:///default")
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["vm", "get", "test", "--json"], out, err) == 0, err.getvalue()
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI")
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "test:///nonexistent-driver-for-hostkv")
    assert cli.main(["vm", "get", "test"], io.StringIO(), io.StringIO()) == cli.EXIT_NO_LIBVIRT
