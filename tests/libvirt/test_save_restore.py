"""Save/restore (through the migration stream): served again, at the restored domain's new socket."""
import os

import pytest

from tests.harness import libvirt_hosts as lh
from tests.libvirt.helpers import channels

pytestmark = [pytest.mark.libvirt, pytest.mark.vm]


def test_save_restore_is_served_again(lv_hosts, guests, lv_workdir):
    a = lv_hosts["a"]
    g = guests.start(a, "sav1", metadata_values={"vm.role": "saved"})
    g.wait_booted()
    g.wait_key("vm.role", "saved", timeout=20)
    path_before = g.hostkv_socket()
    image = os.path.join(lv_workdir, "sav1.save")
    g.dom().save(image)
    lh.wait_for(lambda: "sav1" not in channels(a), 5, what="hostkvd to drop the saved guest")
    try:
        a.hostkvctl(["host", "set", "while=saved"], check=True)   # changes while it is not running
        a.conn.restore(image)
        g.wait_key("host.while", "saved", timeout=10)
        assert g.key("vm.role") == "saved"
        assert g.hostkv_socket() != path_before          # libvirt moved the socket (new domain id)
        assert channels(a)["sav1"]["path"] == g.hostkv_socket()
    finally:
        a.hostkvctl(["host", "unset", "while"])
        if os.path.exists(image):
            os.unlink(image)
