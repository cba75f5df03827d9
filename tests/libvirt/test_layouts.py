"""The simulated hosts' libvirt layouts, and hostkvd/hostkvctl unchanged on both.

modular (EL9/EL10): the real virtqemud and virtproxyd (no libvirtd) - virtqemud's sockets, and
virtproxyd's legacy libvirt-sock; `qemu:///system`
(hostkvd's and hostkvctl's default URI, no socket named anywhere) must resolve to
/run/libvirt/virtqemud-sock: libvirt's remote driver in mode "auto" takes virtqemud-sock when it
exists, else libvirt-sock -- the client's own debug log says which it chose.
monolithic (EL8): libvirtd's /run/libvirt/libvirt-sock only.
"""
import os

import pytest

from tests.harness import libvirt_hosts as lh

pytestmark = [pytest.mark.libvirt, pytest.mark.vm]

SOCKETS = {"modular": "virtqemud-sock", "monolithic": "libvirt-sock"}
DEBUG = ["env", "LIBVIRT_LOG_FILTERS=1:remote", "LIBVIRT_LOG_OUTPUTS=1:stderr"]
PROBE = ("import libvirt; libvirt.registerErrorHandler(lambda c, e: None, None); "
         "c = libvirt.openReadOnly('qemu:///system'); print(c.getURI(), c.getHostname())")


@pytest.mark.parametrize("layout", lh.LAYOUTS)
def test_layout_sockets_and_default_uri_inside_the_host(lv_pairs, layout):
    a = lv_pairs.pair(layout)["a"]
    rundir = os.path.join(a.run_dir, "libvirt")
    assert os.path.exists(os.path.join(rundir, SOCKETS[layout]))
    assert os.path.exists(os.path.join(rundir, SOCKETS[layout] + "-ro"))
    if layout == "monolithic":
        assert not os.path.exists(os.path.join(rundir, "virtqemud-sock")), os.listdir(rundir)
        assert a._pids_named("libvirtd") and not a._pids_named("virtqemud")
    else:
        # EL9's processes: the QEMU driver's daemon and the proxy behind the legacy socket, no libvirtd
        assert a._pids_named("virtqemud") and a._pids_named("virtproxyd"), a.ns_pids()
        assert not a._pids_named("libvirtd")
        assert os.path.exists(os.path.join(rundir, "libvirt-sock"))
    assert a.libvirt_socket == os.path.join(rundir, SOCKETS[layout])
    print("%s layout served by %s" % (layout, a.daemon))

    # a client inside the host with the default URI: libvirt picks the layout's socket
    probe = a.run_in_ns(DEBUG + [lh.PYTHON, "-c", PROBE], capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["qemu:///system", a.hostname]
    assert "Chosen UNIX sockname=/var/run/libvirt/%s-ro " % SOCKETS[layout] in probe.stderr, probe.stderr
    # hostkvd there was started with --connect qemu:///system and found libvirt through it
    a.hostkvds[-1].wait_log("qemu:///system: connected (host %s)" % a.hostname, timeout=60)
    # libvirt's host UUID arrives from the capabilities child after the connection (issue 10.5)
    lh.wait_for(lambda: a.hostkvds[-1].control({"op": "status"})["status"]["host_id"] == a.host_uuid,
                60, what="hostkvd to learn libvirt's host UUID")
    # hostkvctl inside the host, default URI (no --connect)
    env = ["env", "PYTHONPATH=" + lh.PYTHONPATH]
    res = a.run_in_ns(env + [lh.PYTHON, "-m", "hostkv.hostkvctl", "--control-socket",
                             a.control_socket, "status"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "host_id %s" % a.host_uuid in res.stdout
    # ... and its libvirt side: the domain lookup reached the daemon (no such domain, not an error)
    res = a.run_in_ns(env + [lh.PYTHON, "-m", "hostkv.hostkvctl", "--control-socket",
                             a.control_socket, "vm", "get", "no-such-domain"], capture_output=True, text=True)
    assert res.returncode == 4 and "no domain 'no-such-domain'" in res.stderr, res.stdout + res.stderr
