"""hostkvd keeps serving while libvirtd restarts or hangs, then follows new guests and metadata again."""
import pytest

from tests.harness import libvirt_hosts as lh
from tests.libvirt.helpers import channels

pytestmark = [pytest.mark.libvirt, pytest.mark.vm]


def test_libvirtd_restart_under_running_hostkvd(lv_hosts, guests):
    a = lv_hosts["a"]
    hostkvd = a.hostkvds[-1]
    g = guests.start(a, "rst1", metadata_values={"vm.role": "before"})
    g.wait_booted()
    g.wait_key("vm.role", "before", timeout=20)

    mark = hostkvd.log_size()
    a.stop_libvirtd()
    hostkvd.wait_log("connection lost", timeout=15, after=mark)
    # libvirtd is down: the guest is still served (host keys go through hostkvd alone)
    try:
        a.hostkvctl(["host", "set", "during=down"], check=True)
        g.wait_key("host.during", "down", timeout=5)
        assert channels(a)["rst1"]["connected"]

        a.restart_libvirtd()
        hostkvd.wait_log("connected (host %s)" % a.hostname, timeout=30, after=mark)
        # events are registered again: a metadata change reaches the guest
        a.hostkvctl(["vm", "set", "rst1", "role=after"], check=True)
        g.wait_key("vm.role", "after", timeout=5)
        # and a guest started after the restart is picked up
        guests.start(a, "rst2")
        lh.wait_for(lambda: channels(a).get("rst2", {}).get("connected"), 15,
                    what="hostkvd to serve the guest started after the restart")

        # a HUNG libvirtd (stopped; its socket still accepts): the keepalive drops the connection,
        # the reconnect probe runs in a child process, so hostkvd's loop stays free for the guests
        g.exec.run(cmd=["true"])              # remember the exec socket: libvirt can't be asked
        mark = hostkvd.log_size()
        a.freeze_libvirtd()
        try:
            hostkvd.wait_log("connection lost", timeout=40, after=mark)
            a.hostkvctl(["host", "set", "during=hung"], check=True, timeout=10)
            g.wait_key("host.during", "hung", timeout=5)
        finally:
            a.thaw_libvirtd()
        hostkvd.wait_log("connected (host %s)" % a.hostname, timeout=30, after=mark)
        a.hostkvctl(["vm", "set", "rst1", "role=thawed"], check=True)
        g.wait_key("vm.role", "thawed", timeout=5)
    finally:
        a.thaw_libvirtd()
        a.hostkvctl(["host", "unset", "during"])
