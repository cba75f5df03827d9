#!/usr/bin/env python3
"""Benchmark: after a libvirt live migration, how long until the guest sees the landing host's values?

Two real libvirt "hosts" (tests/harness/libvirt_hosts.py: private mount+UTS namespaces, own
libvirtd, own hostkvd with the libvirt source), one test guest migrated A -> B -> A ... with
``dom.migrate(dst, VIR_MIGRATE_LIVE, None, "tcp://127.0.0.1", 0)``.

Per migration it measures, on the host's monotonic clock:
  * resumed_to_visible: from the destination libvirtd's RESUMED(migrated) lifecycle event (received
    by this process through libvirt's default event loop) to the moment the guest's agent shows the
    destination host.  A recorder in the guest blocks in the agent's ``watch`` on host.hostname and
    prints a marker line on the serial console (a file on the host, tailed here every 1 ms) as soon
    as it is answered; the time the marker appears is "visible".  (Until 2026-12 a watcher polled
    the published file every 2 ms instead - which kept the guest's one vCPU busy.)
  * floor: the same for the floor twin (bench/floor.py) in the same guest and migration: a second
    virtio-serial channel ``org.hostkv.floor.0``, a minimal host writer that connects to the
    destination's socket as soon as the incoming domain has one and pushes one line, and a minimal
    guest reader that prints the line on the console the moment read() returns it; the ratio
    hostkv / floor per migration;
  * the agent's per-stage split after RESUMED (``hostkv status --json`` ``timings``, guest clock
    related to the host's through /proc/timer_list);
  * exec_confirm: when a read through the test exec channel, started at RESUMED, confirmed it
    (an upper bound with the exec round trip in it);
  * migrate_call: how long dom.migrate() took to return;
  * resumed_before_return: how long before migrate() returned the destination resumed the guest.

Usage (from the repo root, as root):
    .venv/bin/python bench/libvirt_migration.py [--migrations 6] [--json]
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from tests.harness import use_checkout  # noqa: E402

use_checkout()

import libvirt  # noqa: E402

from bench import guest_clock  # noqa: E402
from bench.floor import (FLOOR_PORT, FLOOR_READER, STATUS_STAGES, percentile, stage_split,  # noqa: E402
                         summary)
from tests.harness import libvirt_hosts as lh  # noqa: E402
from tests.harness.guest_image import build_guest_image  # noqa: E402

GUEST_WATCHER = r"""
import json, os, socket, time
con = os.open("/dev/console", os.O_WRONLY)
seq = 0                      # since 0: the first answer is at once, with the current value
while True:
    try:
        s = socket.socket(socket.AF_UNIX); s.connect("/run/hostkv/agent.sock"); f = s.makefile("rwb")
        req = {"op": "watch", "key": "host.hostname", "since": seq}
        f.write((json.dumps(req) + "\n").encode()); f.flush()
        r = json.loads(f.readline()); s.close()
    except (OSError, ValueError):
        time.sleep(0.1); continue
    if not r.get("ok"):
        time.sleep(0.05); continue
    os.write(con, ("\nhostkv-bench: host.hostname=%s\n" % r.get("value")).encode())
    seq = r["seq"]
"""

FLOOR_CHANNEL = ("<channel type='unix'><source mode='bind'/><target type='virtio' name='%s'/></channel>"
                 % FLOOR_PORT)


class ConsoleTail(object):
    """Follows the guest's console log file.  ``wait_for(text)`` returns when ``text`` appears;
    ``wait_for_all(texts)`` returns {text: when it first appeared} once all have (one pass over
    the file for all of them: a marker that comes first is timed when it comes, not when it is
    looked for)."""

    def __init__(self, path):
        self.path = path
        self.offset = os.path.getsize(path)

    def wait_for(self, text, timeout=30.0, interval=0.001):
        return self.wait_for_all([text], timeout, interval)[text]

    def wait_for_all(self, texts, timeout=30.0, interval=0.001):
        deadline = time.monotonic() + timeout
        buf = b""
        seen = {}
        with open(self.path, "rb") as f:
            while True:
                f.seek(self.offset)
                chunk = f.read()
                if chunk:
                    now = time.monotonic()
                    self.offset += len(chunk)
                    buf += chunk
                    for text in texts:
                        if text not in seen and text.encode() in buf:
                            seen[text] = now
                    if len(seen) == len(texts):
                        return seen
                if time.monotonic() > deadline:
                    raise RuntimeError("console never showed %r" % [t for t in texts if t not in seen])
                time.sleep(interval)


class FloorWriter(object):
    """The floor twin's host side on the destination: connect to the incoming domain's floor
    socket as soon as its live XML names one, push one line, hold the connection."""

    def __init__(self, host, dom_name, line):
        self.host, self.dom_name, self.line = host, dom_name, line
        self.sock = None
        self.error = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import socket
        from hostkv.hostkvd import domain_xml
        conn = self.host.open()
        deadline = time.monotonic() + 120
        try:
            while not self._stop and time.monotonic() < deadline:
                try:
                    xml = conn.lookupByName(self.dom_name).XMLDesc(0)
                    path = domain_xml.channel_socket_path(xml, FLOOR_PORT)[0]
                except libvirt.libvirtError:
                    path = None
                if path:
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    try:
                        s.connect(self.host.outside_path(path))
                        s.sendall((self.line + "\n").encode())
                        self.sock = s
                        return
                    except OSError:
                        s.close()
                time.sleep(0.002)
            self.error = "no floor socket on %s" % self.host.name
        finally:
            conn.close()

    def close(self):
        self._stop = True
        self._thread.join(5)
        if self.sock is not None:
            self.sock.close()


def clock_offset(g):
    """(guest CLOCK_MONOTONIC - host monotonic, error bound)."""
    return guest_clock.offset(lambda argv: g.exec.run(cmd=argv, timeout=20)["stdout"])


def start_guest_with_floor(host, name, image, workdir, metadata_values):
    """lh.start_guest, plus the floor twin's channel (a transient domain)."""
    from tests.harness import accel
    from hostkv.hostkvd import domain_xml as dx
    console_log = os.path.join(workdir, "%s.console.log" % name)
    meta = dx.metadata_element(metadata_values).replace(
        "<keys>", "<hostkv:keys xmlns:hostkv='%s'>" % dx.NS, 1).replace("<key ", "<hostkv:key ").replace(
        "</key>", "</hostkv:key>").replace("</keys>", "</hostkv:keys>")
    xml = lh.domain_xml(name, kernel=image.kernel, initrd=image.initrd,
                        cmdline="console=ttyS0 quiet panic=-1 hostkv.hostname=%s" % name,
                        console_log=console_log, domain_type=accel.libvirt_domain_type(), metadata_xml=meta)
    xml = xml.replace("<memballoon", FLOOR_CHANNEL + "\n    <memballoon", 1)
    host.conn.createXML(xml, 0)
    return lh.LibvirtGuest(host, name, console_log)


class ResumedWatcher(object):
    """Records the monotonic time of RESUMED(migrated) events per destination host name."""

    def __init__(self):
        self.events = {}
        self.cond = threading.Condition()

    def register(self, host):
        conn = host.open()   # kept open for the events; closed with the process
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._cb, host.name)
        return conn

    def _cb(self, _conn, dom, event, detail, host_name):
        if event == libvirt.VIR_DOMAIN_EVENT_RESUMED and detail == libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED:
            with self.cond:
                self.events[(host_name, dom.name())] = time.monotonic()
                self.cond.notify_all()

    def wait(self, host_name, dom_name, timeout=30):
        with self.cond:
            ok = self.cond.wait_for(lambda: (host_name, dom_name) in self.events, timeout)
            if not ok:
                raise RuntimeError("no RESUMED(migrated) event from host %s" % host_name)
            return self.events.pop((host_name, dom_name))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--migrations", type=int, default=6)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.migrations < 1:
        ap.error("--migrations must be >= 1")

    libvirt.virEventRegisterDefaultImpl()          # before any connection is opened
    threading.Thread(target=lambda: [libvirt.virEventRunDefaultImpl() for _ in iter(int, 1)],
                     daemon=True).start()

    image = build_guest_image()
    base = tempfile.mkdtemp(prefix="hostkv-bench-lv-")
    os.chmod(base, 0o755)
    work = lh.make_world_readable_dir("hostkv-bench-lvw-")
    hosts = []
    results = {"resumed_to_visible": [], "floor": [], "ratio": [], "exec_confirm": [], "migrate_call": [],
               "resumed_before_return": [], "poll_rtt": []}
    stages = dict((label, []) for _key, label in STATUS_STAGES)
    floor_writer = None
    try:
        a = lh.LibvirtHost("a", os.path.join(base, "a")).start()
        hosts.append(a)
        b = lh.LibvirtHost("b", os.path.join(base, "b"), cache_from=a).start()
        hosts.append(b)
        for h in hosts:
            h.start_hostkvd("[host]\nhost.rack = r%s\n" % h.name)
        watcher = ResumedWatcher()
        keep = [watcher.register(h) for h in hosts]   # noqa: F841 - the connections must stay open
        g = start_guest_with_floor(a, "bench1", image, work, metadata_values={"vm.role": "bench"})
        g.wait_booted()
        g.wait_key("host.hostname", a.hostname, timeout=30)
        tail = ConsoleTail(g.console_log)
        floor_writer = FloorWriter(a, g.name, "floor-0")
        g.exec.run(cmd=["sh", "-c", "cat > /tmp/hostkv-bench-watch.py"], stdin=GUEST_WATCHER, check=True)
        g.exec.run(sh="setsid python3 /tmp/hostkv-bench-watch.py </dev/null >/dev/null 2>&1 &", check=True)
        g.exec.run(cmd=["sh", "-c", "cat > /tmp/hostkv-bench-floor.py"], stdin=FLOOR_READER, check=True)
        g.exec.run(sh="setsid python3 /tmp/hostkv-bench-floor.py %s --console </dev/null >/dev/null 2>&1 &"
                   % FLOOR_PORT, check=True)
        tail.wait_for("hostkv-bench: host.hostname=%s\r" % a.hostname, timeout=30)   # the tty adds \r
        tail = ConsoleTail(g.console_log)
        tail.offset = 0
        tail.wait_for("hostkv-floor: floor-0\r", timeout=30)
        for i in range(args.migrations):
            dst = b if g.host is a else a
            done = {}
            next_floor = FloorWriter(dst, g.name, "floor-%d" % (i + 1))

            def do_migrate(dom=g.dom(), dst_conn=dst.conn):
                t0 = time.monotonic()
                try:
                    lh.migrate(dom, dst_conn)
                except Exception as err:  # noqa: BLE001 - reported below
                    done["error"] = err
                done["call"] = (t0, time.monotonic())

            tail = ConsoleTail(g.console_log)
            th = threading.Thread(target=do_migrate)
            th.start()
            marks = ("hostkv-bench: host.hostname=%s\r" % dst.hostname, "hostkv-floor: floor-%d\r" % (i + 1))
            seen = tail.wait_for_all(marks, timeout=120)
            t_visible, t_floor = seen[marks[0]], seen[marks[1]]
            t_resumed = watcher.wait(dst.name, g.name, timeout=120)
            floor_writer.close()
            floor_writer = next_floor
            g.host = dst
            polls, errors = 0, 0
            while True:
                p0 = time.monotonic()
                try:
                    value = g.key("host.hostname")
                except Exception:  # noqa: BLE001 - the exec port may not be reconnected yet
                    value, errors = None, errors + 1
                p1 = time.monotonic()
                polls += 1
                if value == dst.hostname:
                    break
                if p1 - t_resumed > 30:
                    raise RuntimeError("guest never saw %s after migration %d" % (dst.hostname, i + 1))
            th.join(120)
            if "error" in done:
                raise RuntimeError("migration %d failed: %s" % (i + 1, done["error"]))
            t_call, t_return = done["call"]
            visible = t_visible
            results["resumed_to_visible"].append(visible - t_resumed)
            results["floor"].append(t_floor - t_resumed)
            results["ratio"].append((visible - t_resumed) / max(t_floor - t_resumed, 1e-6))
            results["exec_confirm"].append(p1 - t_resumed)
            results["migrate_call"].append(t_return - t_call)
            results["resumed_before_return"].append(t_return - t_resumed)
            results["poll_rtt"].append(p1 - p0)
            assert g.key("vm.role") == "bench"
            split = {}
            st = json.loads(g.exec.run(cmd=["hostkv", "status", "--json"])["stdout"])
            if st.get("timings"):
                offset, _rtt = clock_offset(g)
                split = stage_split(st["timings"], t_resumed + offset)
                for label, ms in split.items():
                    stages[label].append(ms / 1000.0)
            if not args.json:
                print("migration %d -> %s: migrate() %.2fs, resumed %.2fs before it returned, value "
                      "visible %.3fs after RESUMED (console marker), floor %.3fs (ratio %.2f), exec read "
                      "confirmed at %.3fs" % (i + 1, dst.name, t_return - t_call, t_return - t_resumed,
                                              visible - t_resumed, t_floor - t_resumed,
                                              results["ratio"][-1], p1 - t_resumed))
                if split:
                    print("        agent: " + ", ".join("%s +%.1f ms" % (label, ms) for label, ms in
                                                        sorted(split.items(), key=lambda kv: kv[1])))
    finally:
        if floor_writer is not None:
            floor_writer.close()
        for h in hosts:
            h.stop()
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    results.update(("stage " + label, v) for label, v in stages.items() if v)
    out = dict((k, summary(v)) for k, v in results.items())
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, s in out.items():
            unit = "" if k == "ratio" else "s"
            print("%-28s n=%d min %.3f%s median %.3f%s p95 %.3f%s max %.3f%s"
                  % (k, s["n"], s["min"], unit, s["median"], unit, s["p95"], unit, s["max"], unit))
        hk, fl = out["resumed_to_visible"], out["floor"]
        print("ratio hostkv / floor: of medians %.2f, of p95s %.2f" % (hk["median"] / fl["median"],
                                                                        hk["p95"] / fl["p95"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
