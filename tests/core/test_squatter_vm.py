"""Issue 10.3(b): another client already holds a real QEMU guest's channel socket when hostkvd
connects.  QEMU's chardev server takes one client at a time, so hostkvd's connect succeeds only
into the listen backlog and nothing it sends reaches the guest.  hostkvd must not call that
"serving": status says the guest is silent (another client may hold the channel) and systemd's
STATUS= line counts it as silent; once the squatter leaves, QEMU takes hostkvd's connection, the
agent speaks, and the channel is serving.

Real QEMU guest (our agent inside), real hostkvd, a real squatter client on the socket.
"""
import json
import socket
import time

import pytest

from tests.core.conftest import start_host
from tests.harness.guest_reads import wait_guest_value
from tests.harness.qemu_guest import QemuGuest
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.vm


def channel(host):
    return host.control({"op": "status"})["status"]["channels"][0]


def test_squatter_holding_the_socket_is_not_serving(tmp_path, image):
    sock = str(tmp_path / "sq.sock")
    guest = QemuGuest(str(tmp_path), sock, image=image, hostname="guest-sq")
    guest.start()
    squatter = None
    host = None
    try:
        guest.wait_ready(120)
        wait_for(lambda: __import__("os").path.exists(guest.channel_path), 30, "QEMU's channel socket")
        squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        squatter.connect(guest.channel_path)       # QEMU accepts it: the guest's port is open to it
        time.sleep(1.0)
        host = start_host(tmp_path, "host-sq", [guest.channel_path])
        wait_for(lambda: channel(host)["connected"], 20, "hostkvd's connect (into QEMU's backlog)")
        time.sleep(3.0)                            # the guest has had every chance to speak
        ch = channel(host)
        assert ch["connected"] and not ch["serving"], ch
        assert ch["guest_spoke_at"] is None
        assert ch["describe"].startswith("connected, guest silent for ")
        assert "another client may hold the channel" in ch["describe"]
        status = host.control({"op": "status"})["status"]
        assert status["status_line"].startswith("serving 0 guests (1 silent)"), status["status_line"]
        reply = host.control({"op": "host-set", "values": {"host.sq": "1"}})
        assert reply["ok"] and reply["pushed"] == 0 and "pushed to 0 guest(s)" in reply["message"]
        # the squatter leaves: QEMU takes hostkvd's queued connection, the agent speaks
        squatter.close()
        squatter = None
        wait_for(lambda: channel(host)["serving"], 60, "the channel to serve once the guest spoke")
        assert channel(host)["describe"] == "serving"
        wait_guest_value(guest, "host.sq", "1", timeout=60)
        status = host.control({"op": "status"})["status"]
        assert status["status_line"].startswith("serving 1 guest"), status["status_line"]
        assert channel(host)["requests"] >= 1, json.dumps(channel(host))   # the agent's sync
    finally:
        if squatter is not None:
            squatter.close()
        if host is not None:
            host.stop()
        guest.stop(sync=False)
