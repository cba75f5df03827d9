#!/usr/bin/env python3
"""hostkv demo: the libvirt path users run.  Two KVM hosts, hostkvd on each in libvirt mode, a
libvirt guest with the org.hostkv.0 channel; `hostkvctl vm set` gives it a per-guest key and
`virsh migrate --live` moves it between the hosts, and the guest reads each host's name.

The two hosts are simulated on this machine exactly as the tests make them
(tests/harness/libvirt_hosts.py): each is a real libvirtd (the monolithic daemon Debian and EL8 run; the tests also run EL9's
modular virtqemud, which Debian does not ship and scripts/build-virtqemud.sh builds) in
its own mount + UTS namespace, so it has its own host name, /run, /etc/libvirt and
/var/lib/libvirt, and hostkvd runs inside that namespace against its qemu:///system.  The guest
is the project's test guest (Debian kernel + busybox + python3) running the real hostkv-agent,
under KVM where /dev/kvm works, TCG otherwise.  Nothing of the machine's own libvirt is touched.
Run by scripts/demo.sh (which installs what it needs first).
"""
import os
import shlex
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.harness import accel  # noqa: E402
from tests.harness import libvirt_hosts as lh  # noqa: E402
from tests.harness.guest_image import build_guest_image  # noqa: E402

HOSTS = (("a", "kvm-host-a.example.org", "r12"), ("b", "kvm-host-b.example.org", "r14"))
GUEST = "web1"


def say(text):
    print("\033[1m==> %s\033[0m" % text if sys.stdout.isatty() else "==> %s" % text, flush=True)


def indent(text):
    return "".join("    " + line + "\n" for line in text.splitlines())


def on_host(host, argv, shown=None):
    """Run a host command (hostkvctl/virsh) as the admin would; print it and its output."""
    print("    [%s]# %s" % (host.hostname, shown or " ".join(shlex.quote(a) for a in argv)), flush=True)
    res = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                         timeout=180)
    if res.stdout.strip():
        print(indent(res.stdout.strip("\n")), end="", flush=True)
    if res.returncode != 0:
        raise SystemExit("demo: %s failed (exit %d)" % (argv[0], res.returncode))
    return res.stdout


def hostkvctl(host, *args):
    """hostkvctl against this host: its libvirt URI and its hostkvd's control socket (on a real
    host both are the defaults, qemu:///system and /run/hostkv/hostkvd.sock)."""
    argv = [lh.PYTHON, "-m", "hostkv.hostkvctl", "--connect", host.uri,
            "--control-socket", host.control_socket] + list(args)
    env = dict(os.environ, PYTHONPATH=lh.PYTHONPATH)
    print("    [%s]# hostkvctl %s" % (host.hostname, " ".join(shlex.quote(a) for a in args)), flush=True)
    res = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                         timeout=60, env=env)
    print(indent(res.stdout), end="", flush=True)
    if res.returncode != 0:
        raise SystemExit("demo: hostkvctl %s failed (exit %d)" % (" ".join(args), res.returncode))


def in_guest(guest, command):
    reply = guest.exec.run(sh=command, timeout=60)
    print("    [%s]$ %s\n%s" % (GUEST, command, indent(reply["stdout"] + reply["stderr"])), end="", flush=True)
    return reply


def main():
    t_start = time.monotonic()
    say("building the test guest image (cached after the first run)")
    image = build_guest_image()
    print("    %s" % accel.describe())
    work = lh.make_world_readable_dir("hostkv-demo-")
    base = os.path.join(work, "hosts")
    hosts = []
    guest = None
    try:
        for name, hostname, rack in HOSTS:
            say("starting KVM host %s: libvirt (%s) and hostkvd in libvirt mode" % (hostname, "libvirtd"))
            host = lh.LibvirtHost(name, os.path.join(base, name), hostname=hostname, layout="monolithic",
                                  cache_from=hosts[0] if hosts else None).start()
            hosts.append(host)
            host.start_hostkvd("[host]\nrack = %s\n" % rack)
            print("    hostkvd serves host.hostname=%s host.rack=%s (libvirt daemon: %s)"
                  % (hostname, rack, host.daemon), flush=True)
        a, b = hosts

        say("defining and starting guest %s on %s, with the org.hostkv.0 channel" % (GUEST, a.hostname))
        guest = lh.start_guest(a, GUEST, image, work, persistent=True)
        t0 = time.monotonic()
        guest.wait_booted(180)
        guest.wait_key("host.hostname", a.hostname, timeout=30)
        print("    booted and served in %.1f s" % (time.monotonic() - t0))
        xml = subprocess.run(["virsh", "-c", a.uri, "dumpxml", GUEST], stdout=subprocess.PIPE,
                             universal_newlines=True, check=True).stdout
        print("    [%s]# virsh dumpxml %s | grep org.hostkv.0" % (a.hostname, GUEST))
        print(indent("\n".join(l.strip() for l in xml.splitlines() if "org.hostkv.0" in l)), end="")
        in_guest(guest, "hostkv get host.hostname; echo")

        say("a per-guest key, kept in the guest's libvirt metadata: hostkvctl vm set")
        hostkvctl(a, "vm", "set", GUEST, "role=web")
        guest.wait_key("vm.role", "web", timeout=10)
        in_guest(guest, "hostkv list")
        hostkvctl(a, "status")

        for src, dst in ((a, b), (b, a)):
            say("live migration with virsh: %s -> %s" % (src.hostname, dst.hostname))
            t0 = time.monotonic()
            on_host(src, ["virsh", "-c", src.uri, "migrate", "--live", "--persistent", "--undefinesource",
                          GUEST, dst.uri, "tcp://127.0.0.1"],
                    shown="virsh migrate --live --persistent --undefinesource %s DEST_URI tcp://127.0.0.1\n"
                          "    (DEST_URI: %s's qemu:///system, here %s)" % (GUEST, dst.hostname, dst.uri))
            guest.host = dst
            guest.wait_key("host.hostname", dst.hostname, timeout=30)
            print("    the guest reads the new host's name %.2f s after virsh migrate began"
                  % (time.monotonic() - t0), flush=True)
            in_guest(guest, "hostkv get host.hostname; echo; hostkv get host.rack; echo; hostkv get vm.role; echo")
            hostkvctl(dst, "vm", "get", GUEST)
        in_guest(guest, ". /run/hostkv/env; echo \"$HOSTKV_HOST_HOSTNAME in rack $HOSTKV_HOST_RACK\"")
        say("done in %.0f s: the guest always reads the name of the host it runs on, and its vm.role"
            " travelled with it" % (time.monotonic() - t_start))
    finally:
        if guest is not None:
            for host in hosts:
                lh.remove_domain(host, GUEST)
        for host in reversed(hosts):
            host.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
