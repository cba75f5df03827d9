"""Finding the port (udev link, sysfs scan, explicit device, no devtmpfs) and probing it."""

import os
import socket
import stat

import pytest

from hostkv.agent import config
from hostkv.agent.port import CONNECTED, DISCONNECTED, Port, PortGone, PortLocator

from test_agent_support import Rig, wait_for


def make_sysfs(tmp_path, entries):
    """entries: {"vport1p1": ("org.hostkv.0", "248:1")} -> sysfs dir path."""
    sysfs = tmp_path / "sys"
    sysfs.mkdir(exist_ok=True)
    for entry, (name, dev) in entries.items():
        (sysfs / entry).mkdir()
        (sysfs / entry / "name").write_text(name + "\n")
        (sysfs / entry / "dev").write_text(dev + "\n")
    return str(sysfs)


def test_udev_link_is_preferred(tmp_path):
    dev = tmp_path / "dev"
    (dev / "virtio-ports").mkdir(parents=True)
    (dev / "vport1p1").write_text("")
    os.symlink("../vport1p1", str(dev / "virtio-ports" / "org.hostkv.0"))
    loc = PortLocator("org.hostkv.0", dev_dir=str(dev), sysfs_dir=str(tmp_path / "nosys"))
    assert loc.find() == str(dev / "virtio-ports" / "org.hostkv.0")


def test_sysfs_scan_without_udev(tmp_path):
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "vport1p2").write_text("")
    sysfs = make_sysfs(tmp_path, {"vport1p1": ("org.qemu.guest_agent.0", "248:1"),
                                  "vport1p2": ("org.hostkv.0", "248:2")})
    loc = PortLocator("org.hostkv.0", dev_dir=str(dev), sysfs_dir=sysfs)
    assert loc.find() == str(dev / "vport1p2")
    assert PortLocator("org.other.0", dev_dir=str(dev), sysfs_dir=sysfs).find() is None


def test_missing_port_explains_why(tmp_path):
    loc = PortLocator("org.hostkv.0", dev_dir=str(tmp_path / "dev"), sysfs_dir=str(tmp_path / "sys"))
    assert loc.locate() is None
    assert "org.hostkv.0 not present" in loc.last_reason
    loc = PortLocator("org.hostkv.0", device=str(tmp_path / "ttyX"))
    assert loc.locate() is None and "does not exist" in loc.last_reason


def test_private_node_when_dev_has_none(tmp_path):
    """No devtmpfs: the node is made from sysfs 'dev' in node_dir (here /dev/null's 1:3).

    Needs root (mknod), as the agent does; the suite runs as root."""
    sysfs = make_sysfs(tmp_path, {"vport2p1": ("org.hostkv.0", "1:3")})
    node_dir = tmp_path / "run"
    node_dir.mkdir()
    loc = PortLocator("org.hostkv.0", dev_dir=str(tmp_path / "dev"), sysfs_dir=sysfs,
                      node_dir=str(node_dir))
    port = loc.locate()
    assert port is not None and port.path == str(node_dir / ".port-vport2p1")
    st = os.stat(port.path)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    port.close()


def test_probe_semantics_on_socket_fds():
    # host away: peer closed -> POLLIN|POLLHUP, read() == 0, and it stays that way
    a, b = socket.socketpair()
    b.sendall(b"leftover from the last connection")
    b.close()
    a.setblocking(False)
    port = Port(os.dup(a.fileno()), "x")
    assert port.probe() == DISCONNECTED        # buffered bytes are drained and dropped
    assert port.probe() == DISCONNECTED
    assert port.read() == b""
    port.close()
    a.close()
    # host there: CONNECTED, reads would block (None), writes go through
    a, b = socket.socketpair()
    a.setblocking(False)
    port = Port(os.dup(a.fileno()), "y")
    assert port.probe() == CONNECTED
    assert port.read() is None
    assert port.write(b"hi") == 2 and b.recv(10) == b"hi"
    port.close()
    a.close()
    b.close()
    # an fd that went away (as after a hot-unplug) raises PortGone, never OSError
    a, b = socket.socketpair()
    fd = os.dup(a.fileno())
    port = Port(fd, "z")
    os.close(fd)
    with pytest.raises(PortGone):
        port.read()
    with pytest.raises(PortGone):
        port.write(b"x")
    a.close()
    b.close()


def test_agent_picks_up_a_hot_plugged_port_by_sysfs_scan(tmp_path):
    """The real PortLocator: the port appears in sysfs while the agent waits (no restart)."""
    rig = Rig(tmp_path, rescan_interval=0.2)
    host_side = {}

    def opener(path):
        assert path == str(tmp_path / "dev" / "vport3p1")
        guest, host = socket.socketpair()     # the host is already there when the port appears
        guest.setblocking(False)
        host_side["sock"] = host
        fd = os.dup(guest.fileno())
        guest.close()
        return fd

    cfg = config.Config(**dict(rig.cfg_kw, dev_dir=str(tmp_path / "dev"),
                               sysfs_dir=str(tmp_path / "sys")))
    from hostkv.agent.port import PortLocator as RealLocator
    rig.locator = RealLocator(cfg.port_name, dev_dir=cfg.dev_dir, sysfs_dir=cfg.sysfs_dir, opener=opener)
    rig.start()
    try:
        (tmp_path / "sys").mkdir()
        wait_for(lambda: rig.ask({"op": "status"})["state"] == "waiting-for-port", what="waiting")
        (tmp_path / "dev").mkdir()
        (tmp_path / "dev" / "vport3p1").write_text("")
        make_sysfs(tmp_path, {"vport3p1": ("org.hostkv.0", "248:3")})
        wait_for(lambda: "sock" in host_side, timeout=3, what="port opened")
        host = host_side["sock"]
        host.settimeout(5)
        data = b""
        while b'"op":"hello"' not in data:
            data += host.recv(4096)
        status = rig.ask({"op": "status"})
        assert status["state"] == "connected" and status["port"].endswith("vport3p1")
    finally:
        rig.stop()
        if "sock" in host_side:
            host_side["sock"].close()


# ---------------------------------------------------------------- hot-plug notifications

def _uevent(action, subsystem):
    return ("%s@/devices/pci0000:00/0000:00:02.0/virtio0/virtio-ports/vport0p3\0ACTION=%s\0"
            "DEVPATH=/devices/pci0000:00/0000:00:02.0/virtio0/virtio-ports/vport0p3\0SUBSYSTEM=%s\0"
            "DEVNAME=vport0p3\0SEQNUM=1\0" % (action, action, subsystem)).encode()


def test_hotplug_watcher_tells_which_uevents_concern_a_port():
    """read() drains the socket and says whether any uevent was about a virtio port (the
    messages as measured in the test guest; a datagram socketpair stands in for netlink)."""
    import socket
    from hostkv.agent.hotplug import HotplugWatcher
    watcher = HotplugWatcher()
    watcher.sock, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    watcher.sock.setblocking(False)
    try:
        assert watcher.read() is False                     # nothing there: no blocking, no
        peer.send(_uevent("add", "block"))
        assert watcher.read() is False                     # another subsystem
        peer.send(_uevent("add", "virtio-ports"))
        peer.send(_uevent("change", "virtio-ports"))
        assert watcher.read() is True
        assert watcher.read() is False                     # drained
        anything = HotplugWatcher(subsystem=None)          # an explicit --device: any uevent
        anything.sock = watcher.sock
        peer.send(_uevent("add", "tty"))
        assert anything.read() is True
    finally:
        watcher.close()
        peer.close()
    assert watcher.sock is None


def test_hotplug_watcher_opens_a_real_uevent_socket_or_says_it_cannot():
    from hostkv.agent.hotplug import HotplugWatcher
    watcher = HotplugWatcher()
    try:
        opened = watcher.open()
        assert opened in (True, False)
        if opened:
            assert watcher.fileno() >= 0 and watcher.open() is True     # idempotent
            assert watcher.read() in (True, False)                      # never blocks
    finally:
        watcher.close()
