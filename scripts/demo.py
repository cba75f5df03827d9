#!/usr/bin/env python3
"""hostkv demo: a real guest reads its physical host's name, is live-migrated, reads the new one.

Two simulated physical hosts on this machine: each is a hostkvd in its own UTS namespace (so its
kernel host name differs) serving the QEMU guest's org.hostkv.0 channel socket on that "host".
The guest is the project's test guest (Debian kernel + busybox + python3) running the real
hostkv-agent, booted under KVM where it works, TCG otherwise.  Run by scripts/demo.sh.
"""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.harness import accel  # noqa: E402
from tests.harness.guest_image import build_guest_image  # noqa: E402
from tests.harness.hostkvd_proc import HostkvdProcess, uts_prefix  # noqa: E402
from tests.harness.migration import make_destination, migrate  # noqa: E402
from tests.harness.qemu_guest import QemuGuest  # noqa: E402

HOSTS = ("kvm-host-a.example.org", "kvm-host-b.example.org")


def say(text):
    print("\033[1m==> %s\033[0m" % text if sys.stdout.isatty() else "==> %s" % text, flush=True)


def in_guest(guest, command):
    rc, out, err = guest.exec(command, timeout=60)
    print("    guest$ %s\n%s" % (command, "".join("    " + line + "\n" for line in (out + err).splitlines())),
          end="", flush=True)
    return rc, out


def wait_value(guest, key, expected, timeout=30):
    deadline = time.monotonic() + timeout
    while guest.exec(["cat", "/run/hostkv/keys/" + key])[1] != expected:
        if time.monotonic() > deadline:
            raise SystemExit("demo: the guest never saw %s=%s\n%s" % (key, expected, guest.console_tail()))
        time.sleep(0.1)


def main():
    work = tempfile.mkdtemp(prefix="hostkv-demo-")
    say("building the test guest image (cached after the first run)")
    image = build_guest_image()
    print("    %s" % accel.describe())
    socks = [os.path.join(work, "host-a.sock"), os.path.join(work, "host-b.sock")]
    hosts = []
    for name, sock in zip(HOSTS, socks):
        say("starting hostkvd on simulated host %s" % name)
        hosts.append(HostkvdProcess(os.path.join(work, name), channels=[sock], prefix=uts_prefix(name),
                                    config_text="[host]\nhost.datacenter = demo-dc\nhost.rack = rack-%s\n"
                                    % name[9], extra_args=["--log-level", "info"]).start())
    guest = QemuGuest(work, socks[0], image=image, hostname="demo-guest")
    try:
        say("booting the guest on %s" % HOSTS[0])
        guest.start()
        print("    booted in %.1f s" % guest.wait_ready(180))
        wait_value(guest, "host.hostname", HOSTS[0])
        in_guest(guest, "hostkv get host.hostname; echo")
        in_guest(guest, "hostkv list")
        in_guest(guest, "hostkv status")
        for hop, target in enumerate((1, 0)):
            say("live-migrating the guest to %s" % HOSTS[target])
            dst = make_destination(guest, socks[target])
            t0 = time.monotonic()
            migrate(guest, dst)
            guest = dst
            wait_value(guest, "host.hostname", HOSTS[target])
            print("    migrated; the guest shows the new host %.2f s after the migrate command"
                  % (time.monotonic() - t0))
            in_guest(guest, "hostkv get host.hostname; echo")
            in_guest(guest, ". /run/hostkv/env; echo \"rack: $HOSTKV_HOST_RACK\"")
        say("done: the guest always reads the name of the host it runs on")
    finally:
        guest.stop(sync=False)
        for h in hosts:
            h.stop()


if __name__ == "__main__":
    main()
