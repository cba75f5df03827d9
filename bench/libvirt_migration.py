#!/usr/bin/env python3
"""Benchmark: after a libvirt live migration, how long until the guest sees the landing host's values?

Two real libvirt "hosts" (tests/harness/libvirt_hosts.py: private mount+UTS namespaces, own
libvirtd, own hostkvd with the libvirt source), one test guest migrated A -> B -> A ... with
``dom.migrate(dst, VIR_MIGRATE_LIVE, None, "tcp://127.0.0.1", 0)``.

Per migration it measures, on the host's monotonic clock:
  * resumed_to_visible: from the destination libvirtd's RESUMED(migrated) lifecycle event (received
    by this process through libvirt's default event loop) to the moment the guest's published
    ``/run/hostkv/keys/host.hostname`` names the destination host.  A small watcher in the guest
    polls that file every 2 ms and prints a marker line on the serial console (a file on the host,
    tailed here every 1 ms) when it changes; the time the marker appears is "visible";
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

from tests.harness import libvirt_hosts as lh  # noqa: E402
from tests.harness.guest_image import build_guest_image  # noqa: E402


def percentile(values, p):
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values):
    return {"n": len(values), "min": min(values), "median": statistics.median(values),
            "p95": percentile(values, 95), "max": max(values)}


GUEST_WATCHER = r"""
import os, sys, time
path = "/run/hostkv/keys/host.hostname"
last = None
con = os.open("/dev/console", os.O_WRONLY)
while True:
    try:
        with open(path) as f:
            v = f.read()
    except OSError:
        v = None
    if v != last:
        os.write(con, ("\nhostkv-bench: host.hostname=%s\n" % v).encode())
        last = v
    time.sleep(0.002)
"""


class ConsoleTail(object):
    """Follows the guest's console log file; ``wait_for(text)`` returns when ``text`` appears."""

    def __init__(self, path):
        self.path = path
        self.offset = os.path.getsize(path)

    def wait_for(self, text, timeout=30.0, interval=0.001):
        deadline = time.monotonic() + timeout
        buf = b""
        needle = text.encode()
        with open(self.path, "rb") as f:
            while True:
                f.seek(self.offset)
                chunk = f.read()
                if chunk:
                    now = time.monotonic()
                    self.offset += len(chunk)
                    buf += chunk
                    if needle in buf:
                        return now
                if time.monotonic() > deadline:
                    raise RuntimeError("console never showed %r" % text)
                time.sleep(interval)


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
    results = {"resumed_to_visible": [], "exec_confirm": [], "migrate_call": [], "resumed_before_return": [],
               "poll_rtt": []}
    try:
        a = lh.LibvirtHost("a", os.path.join(base, "a")).start()
        hosts.append(a)
        b = lh.LibvirtHost("b", os.path.join(base, "b"), cache_from=a).start()
        hosts.append(b)
        for h in hosts:
            h.start_hostkvd("[host]\nhost.rack = r%s\n" % h.name)
        watcher = ResumedWatcher()
        keep = [watcher.register(h) for h in hosts]   # noqa: F841 - the connections must stay open
        g = lh.start_guest(a, "bench1", image, work, metadata_values={"vm.role": "bench"}, persistent=False)
        g.wait_booted()
        g.wait_key("host.hostname", a.hostname, timeout=30)
        tail = ConsoleTail(g.console_log)
        g.exec.run(cmd=["sh", "-c", "cat > /tmp/hostkv-bench-watch.py"], stdin=GUEST_WATCHER, check=True)
        g.exec.run(sh="setsid python3 /tmp/hostkv-bench-watch.py </dev/null >/dev/null 2>&1 &", check=True)
        tail.wait_for("hostkv-bench: host.hostname=%s\r" % a.hostname, timeout=30)   # the tty adds \r
        for i in range(args.migrations):
            dst = b if g.host is a else a
            done = {}

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
            t_visible = tail.wait_for("hostkv-bench: host.hostname=%s\r" % dst.hostname, timeout=120)
            t_resumed = watcher.wait(dst.name, g.name, timeout=120)
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
            results["exec_confirm"].append(p1 - t_resumed)
            results["migrate_call"].append(t_return - t_call)
            results["resumed_before_return"].append(t_return - t_resumed)
            results["poll_rtt"].append(p1 - p0)
            assert g.key("vm.role") == "bench"
            if not args.json:
                print("migration %d -> %s: migrate() %.2fs, resumed %.2fs before it returned, value "
                      "visible %.3fs after RESUMED (console marker), exec read confirmed at %.3fs"
                      % (i + 1, dst.name, t_return - t_call, t_return - t_resumed, visible - t_resumed,
                         p1 - t_resumed))
    finally:
        for h in hosts:
            h.stop()
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    out = dict((k, summary(v)) for k, v in results.items())
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, s in out.items():
            print("%-22s n=%d min %.3fs median %.3fs p95 %.3fs max %.3fs"
                  % (k, s["n"], s["min"], s["median"], s["p95"], s["max"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
