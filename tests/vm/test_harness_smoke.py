"""Smoke tests of the real-VM harness: a real QEMU guest (TCG here) booting our image.

One guest is shared by the module (booting costs ~7 s under TCG); the tests run in file order
and later ones rely on the earlier ones' state only where stated.  Figures are printed (-s).
"""

import http.server
import json
import os
import socket
import socketserver
import threading
import time

import pytest

from tests.harness import accel
from tests.harness.guest_image import REPO, build_guest_image
from tests.harness.migration import MigrationPair
from tests.harness.qemu_guest import GuestError, QemuGuest, unix_forward
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.vm

AGENT_MAIN = os.path.join(REPO, "guest_agent", "hostkv", "agent", "__main__.py")


def wait_until(pred, timeout, what):
    return wait_for(pred, timeout, what, interval=0.1)


def port_names(guest):
    rc, out, err = guest.exec("cat /sys/class/virtio-ports/*/name", timeout=10)
    return set(out.split())


@pytest.fixture(scope="module")
def image():
    t0 = time.monotonic()
    img = build_guest_image()
    print("\nguest image %s (%.1f MB initrd) ready in %.1f s; %s"
          % (img.key, os.path.getsize(img.initrd) / 1e6, time.monotonic() - t0, accel.describe()))
    return img


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("vm"))


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello from the host: %s" % self.path).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_socket(workdir):
    """A tiny HTTP server on a host unix socket (reached from the guest via guestfwd)."""
    path = os.path.join(workdir, "http.sock")
    server = socketserver.ThreadingUnixStreamServer(path, _Hello)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield path
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def guest(image, workdir, http_socket):
    g = QemuGuest(workdir, os.path.join(workdir, "hostkv-a.sock"), image=image,
                  hostname="smoke-guest",
                  guestfwd=[("10.0.2.100", 80, unix_forward(http_socket))])
    g.start()
    try:
        boot = g.wait_ready(timeout=90)
        print("\nboot: exec server answered %.2f s after QEMU start (guest uptime %.2f s)"
              % (boot, g.guest_uptime_at_ready))
        yield g
    finally:
        g.stop()


def test_exec_runs_commands(guest, image):
    rc, out, err = guest.exec(["uname", "-r"])
    assert (rc, out.strip(), err) == (0, image.kernel_release, "")
    rc, out, _ = guest.exec("hostname; echo to-stderr >&2; exit 3")
    assert rc == 3 and out == "smoke-guest\n"
    rc, out, _ = guest.exec(["cat"], stdin="päyload\n")
    assert (rc, out) == (0, "päyload\n")
    guest.write_file("/etc/hostkv/hooks.d/x y", "#!/bin/sh\necho 'it ran'\n", mode=0o755)
    assert guest.read_file("/etc/hostkv/hooks.d/x y").endswith("'it ran'\n")
    assert guest.exec(["/etc/hostkv/hooks.d/x y"])[1] == "it ran\n"
    assert guest.wait_until("test -e /run/hostkv-test/init-done && echo yes", 10) == "yes\n"
    with pytest.raises(GuestError, match="still failing"):
        guest.wait_until("false", timeout=1)


def test_exec_timeout_and_check_fail_loudly(guest):
    t0 = time.monotonic()
    with pytest.raises(GuestError) as info:
        guest.exec(["sleep", "30"], timeout=1)
    assert "timed out" in str(info.value) and "console tail" in str(info.value)
    assert time.monotonic() - t0 < 10
    with pytest.raises(GuestError):
        guest.exec("false", check=True)
    assert guest.exec(["true"])[0] == 0          # the channel is still usable


def test_exec_reply_survives_host_disconnect(guest):
    """The exec server keeps a reply while the host side is away and sends it on reconnect
    (what happens around a migration)."""
    guest._exec.close()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(guest.exec_path)
    s.sendall(b'\n{"id": "late", "sh": "sleep 1; echo done"}\n')
    time.sleep(0.3)
    s.close()                      # host side gone while the command runs
    time.sleep(1.5)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(guest.exec_path)
    buf = b""
    while b"\n" not in buf.lstrip(b"\n"):
        chunk = s.recv(4096)
        assert chunk, "exec socket closed"
        buf += chunk
    s.close()
    reply = json.loads(buf.strip().split(b"\n")[0])
    assert (reply["id"], reply["rc"], reply["stdout"]) == ("late", 0, "done\n")
    guest.reconnect_exec()
    assert guest.exec(["true"])[0] == 0


def test_guest_python_has_the_agents_stdlib(guest):
    rc, out, err = guest.exec(
        "python3 -c 'import json, selectors, subprocess, argparse, logging, signal, socket, "
        "threading, tempfile, shlex, http.client, urllib.request, hashlib; print(json.dumps([1]))'",
        timeout=60)
    assert (rc, out, err) == (0, "[1]\n", "")


def test_hostkv_port_visible_and_state_disk_mounted(guest):
    assert port_names(guest) == {"org.hostkv.0", "org.hostkv.test.0"}
    rc, out, _ = guest.exec("grep ' /var/lib/hostkv ' /proc/mounts")
    assert rc == 0 and out.startswith("/dev/vda /var/lib/hostkv ext2"), out
    guest.exec("echo kept > /var/lib/hostkv/reboot-marker && sync", check=True)


def test_user_net_reaches_only_the_forwarded_host_service(guest):
    rc, out, err = guest.exec(
        "python3 -c \"import urllib.request; print(urllib.request.urlopen("
        "'http://10.0.2.100/x', timeout=20).read().decode())\"", timeout=60)
    assert (rc, out) == (0, "hello from the host: /x\n"), err
    # restrict=on: the slirp gateway forwards nothing else (no traffic leaves the machine)
    rc, out, err = guest.exec("busybox wget -q -T 3 -O - http://10.0.2.2:80/ 2>&1", timeout=30)
    assert rc != 0


@pytest.mark.skipif(not os.path.exists(AGENT_MAIN), reason="guest_agent has no __main__ yet")
def test_agent_help_runs_in_guest(guest):
    rc, out, err = guest.exec(["/usr/sbin/hostkv-agent", "--help"], timeout=60)
    assert rc == 0, err
    assert "usage" in out.lower()


def test_hotplug_port_appears_in_sysfs_and_unplug_removes_it(guest, workdir):
    guest.hotplug_port("org.hostkv.extra.0", os.path.join(workdir, "extra.sock"))
    guest.hotplug_port("org.hostkv.extra.1", os.path.join(workdir, "extra1.sock"))
    wait_until(lambda: {"org.hostkv.extra.0", "org.hostkv.extra.1"} <= port_names(guest), 15,
               "hot-plugged ports")
    guest.unplug_port("org.hostkv.extra.1")
    wait_until(lambda: "org.hostkv.extra.1" not in port_names(guest), 15, "unplugged port gone")
    assert [p.name for p in guest.ports] == ["org.hostkv.0", "org.hostkv.test.0",
                                             "org.hostkv.extra.0"]


def test_live_migration_a_b_a(guest, workdir):
    """A -> B -> A; exec answers after each hop; the hot-plugged port migrates along."""
    pair = MigrationPair(guest, os.path.join(workdir, "hostkv-a.sock"),
                         os.path.join(workdir, "hostkv-b.sock"))
    try:
        for expect in ("hostkv-b.sock", "hostkv-a.sock"):
            res = pair.hop()
            print("\nmigration %r" % res)
            assert pair.channel_path.endswith(expect)
            assert os.path.exists(pair.channel_path)
            rc, out, _ = pair.guest.exec("cat /var/lib/hostkv/reboot-marker")
            assert (rc, out) == (0, "kept\n")
            assert "org.hostkv.extra.0" in port_names(pair.guest)
            assert res.completed_s < 30 and res.resumed_s <= res.exec_back_s
        assert not guest.is_running()
    finally:
        if pair.guest is not guest:
            pair.guest.stop()


def test_reboot_keeps_state_disk_and_two_guests_migrate_side_by_side(guest, image, workdir):
    """A new QEMU on the same disk (= a reboot) sees what was written, and has no org.hostkv.0;
    meanwhile a second guest in the same workdir boots and migrates: no path races."""
    guest.stop()        # normally already migrated away; the disk must be free
    g1 = QemuGuest(workdir, None, name="noport", image=image, noagent=True)
    g2 = QemuGuest(workdir, os.path.join(workdir, "second-a.sock"), name="second", image=image,
                   state_disk=None, hostname="second")
    try:
        g1.start()
        g2.start()
        g1.wait_ready(timeout=120)
        g2.wait_ready(timeout=120)
        assert port_names(g1) == {"org.hostkv.test.0"}
        assert g1.channel_path is None
        assert g1.exec("cat /var/lib/hostkv/reboot-marker")[1] == "kept\n"
        pair = MigrationPair(g2, g2.channel_path, os.path.join(workdir, "second-b.sock"))
        try:
            res = pair.hop()
            print("\nmigration next to a running guest: %r" % res)
            assert pair.guest.exec("hostname")[1] == "second\n"
            assert g1.exec("hostname")[1] == "hostkv-guest\n"
        finally:
            pair.guest.stop()
    finally:
        g1.stop()
        g2.stop()


def test_qemu_that_cannot_start_fails_loudly_with_its_log(image, tmp_path):
    g = QemuGuest(str(tmp_path), None, name="broken", image=image, state_disk=None,
                  extra_args=["-device", "no-such-device-hostkv"])
    with pytest.raises(GuestError) as info:
        g.start()
    g.stop()
    assert "exited with status" in str(info.value)
    assert "no-such-device-hostkv" in str(info.value)      # QEMU's own error, from its log
    assert not g.is_running()


def test_custom_agent_root_is_overlaid_and_respawned_like_systemd(tmp_path):
    """build_guest_image(agent_root=DIR) puts DIR's tree onto the guest's /; init runs
    /usr/sbin/hostkv-agent and restarts it 2 s after it exits (Restart=always, RestartSec=2)."""
    root = tmp_path / "root"
    (root / "usr" / "sbin").mkdir(parents=True)
    agent = root / "usr" / "sbin" / "hostkv-agent"
    agent.write_text("#!/bin/sh\necho started >> /run/fake-agent.log\nexit 3\n")
    agent.chmod(0o755)
    img = build_guest_image(agent_root=str(root))
    assert img.initrd != build_guest_image().initrd          # the agent tree is in the key
    g = QemuGuest(str(tmp_path), None, name="fake", image=img, state_disk=None)
    g.start()
    try:
        g.wait_ready(timeout=90)
        g.wait_until("[ $(wc -l < /run/fake-agent.log) -ge 2 ]", timeout=30)
        assert "exited with status 3" in g.read_file("/var/log/hostkv-agent.log")
        assert "hostkv-agent exited with status 3" in g.console_tail(200)
        g.exec("touch /run/hostkv-test/no-respawn", check=True)
    finally:
        g.stop()
