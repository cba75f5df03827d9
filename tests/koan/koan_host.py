"""A libvirt "KVM host" for koan tests: the harness's LibvirtHost, plus its own network namespace.

Why a network namespace: koan 3.0.1 always writes ``--network bridge=<virt_bridge>`` into the
virt-install command, so the guest's NIC must be plugged into a bridge that exists on the host.
Inside this host's private network namespace there is a bridge :data:`BRIDGE` with no uplink:
nothing the guest sends can reach the machine's network, and nothing is created in the machine's
own network namespace.  Unix sockets are path based, so ``host.uri`` (libvirt's socket) and the
channel sockets work from outside exactly as with the plain LibvirtHost.

Why /dev/kvm is hidden inside: koan's qcreate switches ``--virt-type`` to kvm whenever libvirt's
capabilities list a kvm domain type.  On a machine where KVM is not usable for guests (see
tests/harness/accel.py: nested kvm_pvm, no vmx/svm) libvirt still lists kvm and the guest would
hang; this "host" then simply has no KVM (a root-only 0600 file is bind-mounted over /dev/kvm,
so libvirt's capabilities honestly say qemu only).  On a real KVM machine nothing is hidden.

:func:`forward_tcp` makes a TCP port of the machine's loopback (e.g. Cobbler's HTTP front)
reachable on the same port of the namespace's loopback, through a unix socket (socat x2).
"""

import os
import subprocess

from tests.harness import accel
from tests.harness.libvirt_hosts import HarnessError, LibvirtHost, _set_conf, wait_for

BRIDGE = "hkvbr0"

_NET_SETUP = """
ip link set lo up
ip link add %(bridge)s type bridge
ip link set %(bridge)s up
if [ "$HIDE_KVM" = 1 ] && [ -e /dev/kvm ]; then
    : > "$B/nokvm"; chmod 0600 "$B/nokvm"
    mount --bind "$B/nokvm" /dev/kvm
fi
echo ready""" % {"bridge": BRIDGE}


class KoanLibvirtHost(LibvirtHost):
    """LibvirtHost in its own network namespace with the isolated bridge :data:`BRIDGE`."""

    NAMESPACES = ("-m", "-u", "-n")     # + its own network namespace

    def __init__(self, name, basedir, **kwargs):
        # EL8's monolithic libvirtd: virt-install (koan runs it) needs libvirt's storage driver to
        # place the disk, which the modular layout would serve from virtstoraged - not among the
        # modular daemons scripts/build-virtqemud.sh builds (virtqemud, virtproxyd)
        kwargs.setdefault("layout", "monolithic")
        super(KoanLibvirtHost, self).__init__(name, basedir, **kwargs)

    def _prepare_dirs(self):
        super(KoanLibvirtHost, self)._prepare_dirs()
        # libvirt's per-domain /dev namespace cannot "move" the file bind-mounted over /dev/kvm
        # ("Unable to move ... mount to /dev/kvm"); this host's guests do without it.
        _set_conf(os.path.join(self.basedir, "etc", "qemu.conf"), {"namespaces": "[]"})

    def _keeper_script(self):
        script = super(KoanLibvirtHost, self)._keeper_script()
        if "echo ready" not in script:
            raise HarnessError("tests/harness/libvirt_hosts.py's keeper script changed; "
                               "update tests/koan/koan_host.py")
        return script.replace("echo ready", _NET_SETUP)

    def _keeper_env(self):
        return dict(os.environ, HIDE_KVM="0" if accel.use_kvm() else "1")


class TcpForward(object):
    """127.0.0.1:PORT of the machine, reachable as 127.0.0.1:PORT inside ``host``'s namespace."""

    def __init__(self, host, port, sockdir):
        self.port = port
        sock = os.path.join(sockdir, "fwd-%d.sock" % port)
        self.outside = subprocess.Popen(
            ["socat", "UNIX-LISTEN:%s,fork,unlink-early,mode=600" % sock,
             "TCP:127.0.0.1:%d" % port], stdin=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: os.path.exists(sock), 10, what="forward socket %s" % sock)
        self.inside = host.popen_in_ns(
            ["socat", "TCP-LISTEN:%d,bind=127.0.0.1,fork,reuseaddr" % port, "UNIX-CONNECT:%s" % sock],
            stdin=subprocess.DEVNULL, start_new_session=True)
        probe = "exec 3<>/dev/tcp/127.0.0.1/%d" % port
        wait_for(lambda: host.run_in_ns(["bash", "-c", probe], capture_output=True).returncode == 0,
                 10, what="forwarded port %d inside %s" % (port, host.name))

    def stop(self):
        for proc in (self.inside, self.outside):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def forward_tcp(host, port, sockdir):
    """Start a :class:`TcpForward` (caller stops it)."""
    return TcpForward(host, port, sockdir)
