"""A real-OS test guest (Debian 12, systemd + udev; tests/harness/real_os_image.py) under libvirt.

    disk = InstalledDisk(kernel, initrd, raw_image)            # what the kickstart produced
    g = start_real_os_guest(host, "rg1", disk, workdir)         # defines + starts the domain
    g.wait_booted()                                             # exec server up, systemd done
    g.sh("systemctl is-active hostkv-agent")                    # -> reply dict (rc, stdout, ...)
    g.as_user("hostkv get host.hostname")                       # a login shell of USER
    g.journal("hostkv-agent")                                   # [(priority, message)] this boot

The domain (:class:`RealOsDomain`, an ElementTree model, no string templates): direct kernel boot
(``<kernel>``, ``<initrd>``, ``root=/dev/vda``), the disk as a qcow2 overlay of the installed raw
image (one per domain, so domains never share writes), ``on_reboot`` restart (``systemctl reboot``
in the guest resets it in place), serial console appended to a file, the test exec channel
(org.hostkv.test.0) and, unless asked not to, the hostkv channel (org.hostkv.0) and per-guest
``vm.*`` keys in the domain's hostkv metadata.  Accelerator from tests/harness/accel.py.

Live migration (:func:`migrate`): both simulated hosts are on this machine, so the overlay is
really shared storage; libvirt cannot know that for a local file system and refuses without
VIR_MIGRATE_UNSAFE, which is therefore passed (the disk uses cache='none').
"""

import collections
import os
import time
import xml.etree.ElementTree as ET

from tests.harness import accel
from tests.harness.libvirt_hosts import (HOSTKV_PORT, TEST_EXEC_PORT, HarnessError, LibvirtGuest, remove_domain,
                                         wait_for)
from tests.harness.real_os_image import USER, make_overlay

InstalledDisk = collections.namedtuple("InstalledDisk", "kernel initrd raw")

# Generous: a systemd guest under TCG on a shared 2-core machine boots in ~25-40 s.
BOOT_TIMEOUT = float(os.environ.get("HOSTKV_REAL_OS_BOOT_TIMEOUT", "300"))
MEMORY_MIB = 512


class RealOsDomain(object):
    """The libvirt domain of a real-OS guest, modelled as an ElementTree (``xml()`` renders it)."""

    def __init__(self, name, kernel, initrd, disk, console_log, cmdline_extra="", hostkv_channel=True,
                 metadata_values=None, domain_type=None, memory_mib=MEMORY_MIB):
        self.name = name
        d = self.root = ET.Element("domain", type=domain_type or accel.libvirt_domain_type())
        ET.SubElement(d, "name").text = name
        ET.SubElement(d, "memory", unit="MiB").text = str(memory_mib)
        ET.SubElement(d, "vcpu").text = "1"
        if metadata_values:
            from hostkv.hostkvd import domain_xml as dx
            meta = ET.SubElement(d, "metadata")
            keys = ET.SubElement(meta, "{%s}keys" % dx.NS)
            for k in sorted(metadata_values):
                ET.SubElement(keys, "{%s}key" % dx.NS, name=k).text = metadata_values[k]
        os_ = ET.SubElement(d, "os")
        ET.SubElement(os_, "type", arch="x86_64", machine="pc").text = "hvm"
        ET.SubElement(os_, "kernel").text = kernel
        ET.SubElement(os_, "initrd").text = initrd
        ET.SubElement(os_, "cmdline").text = (
            "root=/dev/vda rw console=ttyS0 panic=-1 systemd.hostname=%s %s" % (name, cmdline_extra)).strip()
        ET.SubElement(ET.SubElement(d, "features"), "acpi")
        cpu = ET.SubElement(d, "cpu", mode="custom", match="exact")
        ET.SubElement(cpu, "model", fallback="allow").text = "qemu64"
        for event, action in (("on_poweroff", "destroy"), ("on_reboot", "restart"), ("on_crash", "destroy")):
            ET.SubElement(d, event).text = action
        self.devices = ET.SubElement(d, "devices")
        disk_el = ET.SubElement(self.devices, "disk", type="file", device="disk")
        ET.SubElement(disk_el, "driver", name="qemu", type="qcow2", cache="none")
        ET.SubElement(disk_el, "source", file=disk)
        ET.SubElement(disk_el, "target", dev="vda", bus="virtio")
        serial = ET.SubElement(self.devices, "serial", type="file")
        ET.SubElement(serial, "source", path=console_log, append="on")
        ET.SubElement(serial, "target", port="0")
        ET.SubElement(self.devices, "controller", type="virtio-serial", index="0")
        ports = [TEST_EXEC_PORT] + ([HOSTKV_PORT] if hostkv_channel else [])
        for port in ports:
            ch = ET.SubElement(self.devices, "channel", type="unix")
            ET.SubElement(ch, "source", mode="bind")
            ET.SubElement(ch, "target", type="virtio", name=port)
        ET.SubElement(self.devices, "memballoon", model="none")

    def xml(self):
        from hostkv.hostkvd import domain_xml as dx
        ET.register_namespace(dx.NS_PREFIX, dx.NS)
        return ET.tostring(self.root, encoding="unicode")


class RealOsGuest(LibvirtGuest):
    """LibvirtGuest (exec, key(), published(), wait_key(), dom()) plus systemd-aware helpers."""

    def __init__(self, host, name, console_log, overlay):
        LibvirtGuest.__init__(self, host, name, console_log)
        self.overlay = overlay

    def sh(self, text, timeout=60, check=False):
        return self.exec.run(sh=text, timeout=timeout, check=check)

    def out(self, text, timeout=60):
        """stdout of ``text`` (stripped); raises HarnessError if it fails."""
        return self.sh(text, timeout=timeout, check=True)["stdout"].strip()

    def as_user(self, text, user=USER, timeout=60):
        """``text`` in a login shell of ``user`` (runuser -l: PAM session, the user's own env)."""
        return self.exec.run(cmd=["runuser", "-l", user, "-c", text], timeout=timeout)

    def boot_id(self):
        return self.out("cat /proc/sys/kernel/random/boot_id")

    def reboot(self, delay=2):
        """``systemctl reboot`` in the guest, ``delay`` s after this call has its answer.

        A plain ``sh("systemctl reboot")`` races the shutdown: systemd may stop the exec server
        before it writes its reply (seen in CI: "no reply from the guest exec server within 75 s").
        A transient timer (systemd-run) makes the reply come first; returns the old boot id."""
        old = self.boot_id()
        self.out("systemd-run --quiet --on-active=%d --timer-property=AccuracySec=100ms "
                 "/bin/systemctl reboot" % delay)
        return old

    def wait_booted(self, timeout=BOOT_TIMEOUT):
        """Wait for the exec server, then for systemd to finish starting up; returns seconds.

        Raises HarnessError (with the console tail) on timeout or if the boot ended degraded
        (a failed unit is a failed boot here)."""
        t0 = time.monotonic()
        try:
            wait_for(lambda: self.exec.ping(3.0), timeout, interval=0.5,
                     what="real-OS guest %s's exec server" % self.name)
            left = max(10.0, timeout - (time.monotonic() - t0))
            state = self.sh("systemctl is-system-running --wait", timeout=left)
        except HarnessError as err:
            raise HarnessError("%s\nconsole:\n%s" % (err, self.console()))
        if state["stdout"].strip() != "running":
            failed = self.sh("systemctl --failed --no-legend --plain; journalctl -b -p warning --no-pager | tail -30")
            raise HarnessError("guest %s booted %r, not 'running':\n%s"
                               % (self.name, state["stdout"].strip(), failed["stdout"]))
        return time.monotonic() - t0

    def journal(self, unit, since_cursor=None, priority="info", ident=None):
        """[(priority, message)] of ``unit``'s journal lines of this boot, up to ``priority``;
        only those logged under SYSLOG_IDENTIFIER ``ident`` if given (e.g. the service's own
        lines, not systemd's "Started ..." about it)."""
        import json
        args = "journalctl -b -u %s -p %s -o json --no-pager" % (unit, priority)
        if since_cursor:
            args += " --after-cursor='%s'" % since_cursor
        lines = self.out(args).splitlines()
        out = []
        for line in lines:
            rec = json.loads(line)
            if ident is None or rec.get("SYSLOG_IDENTIFIER") == ident:
                out.append((int(rec.get("PRIORITY", 6)), rec.get("MESSAGE")))
        return out

    def journal_cursor(self):
        return self.out("journalctl -n 0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p'")

    def wait_journal(self, unit, text, timeout=60, since_cursor=None):
        """Wait until a journal line of ``unit`` contains ``text``; returns that (prio, msg)."""
        def found():
            for prio, msg in self.journal(unit, since_cursor=since_cursor, priority="debug"):
                if msg and text in msg:
                    return (prio, msg)
            return None
        return wait_for(found, timeout, interval=0.5,
                        what="%r in the journal of %s on %s" % (text, unit, self.name))

    def unit_property(self, unit, prop):
        return self.out("systemctl show -P %s %s" % (prop, _quote(unit)))


def _quote(s):
    return "'%s'" % s.replace("'", "'\\''")


def start_real_os_guest(host, name, disk, workdir, hostkv_channel=True, metadata_values=None,
                        persistent=True, cmdline_extra=""):
    """Define (if ``persistent``) and start a real-OS guest on ``host`` from ``disk`` (an
    InstalledDisk); its overlay and console log live in ``workdir``.  Does not wait for the boot."""
    overlay = make_overlay(disk.raw, os.path.join(workdir, "%s.qcow2" % name))
    console_log = os.path.join(workdir, "%s.console.log" % name)
    dom = RealOsDomain(name, disk.kernel, disk.initrd, overlay, console_log,
                       cmdline_extra=cmdline_extra, hostkv_channel=hostkv_channel,
                       metadata_values=metadata_values)
    conn = host.conn
    if persistent:
        conn.defineXML(dom.xml()).create()
    else:
        conn.createXML(dom.xml(), 0)
    return RealOsGuest(host, name, console_log, overlay)


def migrate(guest, dst):
    """Live-migrate ``guest`` to LibvirtHost ``dst`` (see the module docstring for UNSAFE)."""
    import libvirt
    flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_UNSAFE
    if guest.dom().isPersistent():
        flags |= libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    guest.dom().migrate(dst.conn, flags, None, "tcp://127.0.0.1", 0)
    guest.host = dst


def destroy(guest):
    """Destroy and undefine ``guest`` wherever it runs now (best effort), remove its overlay."""
    remove_domain(guest.host, guest.name)
    if os.path.exists(guest.overlay):
        os.unlink(guest.overlay)
