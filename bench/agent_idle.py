#!/usr/bin/env python3
"""What an idle agent costs, and how fast it follows the host: in the real test guest (TCG here).

One guest, the real agent, a real hostkvd started and stopped by this script:
  * wakeups while the host is away for S seconds, and while connected with nothing changing for
    S seconds: the agent's context switches (voluntary + involuntary, summed over its threads from
    /proc/PID/task/*/status; a wake-up costs at least one), read with ``cat`` so the reading
    itself does not wake the agent;
  * wakeups while the port is hot-unplugged for S seconds, then hot-plug -> value visible;
  * hostkvd (re)start -> agent back in sync: hostkvd is killed (-9) and started again R times,
    each time with a new ``host.rack``; measured from the moment hostkvd's log says it connected
    (host clock, polled every 1 ms) to the agent's IN_SYNC (``hostkv status --json``
    ``link_since_monotonic``, newer agents) and to the new value visible to a ``watch`` in the
    guest (guest CLOCK_MONOTONIC; clocks related through /proc/timer_list, min-RTT of 7);
  * the agent's RSS (VmRSS, VmHWM) and the number of modules it has imported.

    .venv/bin/python bench/agent_idle.py [--seconds 60] [--restarts 5] [--json]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import guest_clock  # noqa: E402
from tests.harness import accel  # noqa: E402
from tests.harness.guest_image import build_guest_image  # noqa: E402
from tests.harness.hostkvd_proc import HostkvdProcess  # noqa: E402
from tests.harness.qemu_guest import HOSTKV_PORT, QemuGuest  # noqa: E402

RECORDER = r"""
import json, socket, time
seq = None
log = open('/tmp/rack.log', 'a', buffering=1)
while True:
    try:
        s = socket.socket(socket.AF_UNIX); s.connect('/run/hostkv/agent.sock'); f = s.makefile('rwb')
        req = {'op': 'watch', 'key': 'host.rack'}
        if seq is not None: req['since'] = seq
        f.write((json.dumps(req) + '\n').encode()); f.flush()
        r = json.loads(f.readline()); s.close()
    except (OSError, ValueError):
        time.sleep(0.2); continue
    t = time.monotonic()
    if not r.get('ok'):
        time.sleep(0.05); continue
    seq = r['seq']
    log.write('%.6f %s\n' % (t, r.get('value')))
"""


def ctx_switches(guest, pid):
    rc, out, err = guest.exec("cat /proc/%d/task/*/status" % pid)
    total = 0
    for line in out.splitlines():
        if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
            total += int(line.split()[1])
    return total


def proc_status(guest, pid, *fields):
    rc, out, err = guest.exec(["cat", "/proc/%d/status" % pid])
    got = {}
    for line in out.splitlines():
        name, _, value = line.partition(":")
        if name in fields:
            got[name] = value.strip()
    return got


def status(guest):
    rc, out, err = guest.exec(["hostkv", "status", "--json"])
    return json.loads(out)


def clock_offset(guest):
    """(guest CLOCK_MONOTONIC - host monotonic, error bound)."""
    return guest_clock.offset(lambda argv: guest.exec(argv)[1])


def wait_connected_line(host, sock, after, timeout=30):
    """Host monotonic time at which hostkvd's log first says it connected to ``sock``."""
    needle = ("connected to %s" % sock).encode()
    deadline = time.monotonic() + timeout
    with open(host.log_path, "rb") as f:
        while True:
            f.seek(after)
            if needle in f.read():
                return time.monotonic()
            if time.monotonic() > deadline:
                raise RuntimeError("hostkvd never connected:\n" + host.log()[-2000:])
            time.sleep(0.001)


def wait_rack(guest, value, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        rc, out, err = guest.exec(["cat", "/tmp/rack.log"])
        for row in out.splitlines():
            t, _, v = row.partition(" ")
            if v == value:
                return float(t)
        if time.monotonic() > deadline:
            raise RuntimeError("%s never visible in the guest:\n%s" % (value, guest.console_tail()))
        time.sleep(0.05)


def idle_wakeups(guest, pid, seconds):
    before = ctx_switches(guest, pid)
    time.sleep(seconds)
    return ctx_switches(guest, pid) - before


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="hkv-idle-")
    sock = os.path.join(work, "ch.sock")
    host = HostkvdProcess(os.path.join(work, "host"), channels=[sock], host_id="idle-host",
                          config_text="[host]\nhost.rack = r0\n", extra_args=["--log-level", "info"])
    guest = QemuGuest(work, sock, image=build_guest_image())
    res = {"accelerator": accel.describe(), "seconds": args.seconds}
    try:
        guest.start()
        guest.wait_ready(120)
        pid = status(guest)["pid"]
        guest.write_file("/tmp/rack-recorder.py", RECORDER)
        guest.exec("setsid python3 /tmp/rack-recorder.py </dev/null >/tmp/recorder.err 2>&1 &")
        time.sleep(2)
        res["away_wakeups"] = idle_wakeups(guest, pid, args.seconds)

        restarts = []
        for i in range(args.restarts + 1):
            with open(host.config_path, "w") as f:
                f.write("[host]\nhost.rack = r%d\n" % (i + 1))
            mark = os.path.getsize(host.log_path) if os.path.exists(host.log_path) else 0
            t_spawn = time.monotonic()
            host.start()
            t_conn = wait_connected_line(host, sock, mark)
            t_seen = wait_rack(guest, "r%d" % (i + 1))
            offset, err_bound = clock_offset(guest)
            st = status(guest)
            row = {"spawn_to_connect": t_conn - t_spawn, "connect_to_visible": t_seen - offset - t_conn,
                   "clock_error": err_bound}
            if "link_since_monotonic" in st and st.get("in_sync"):
                row["connect_to_in_sync"] = st["link_since_monotonic"] - offset - t_conn
            if i:                                # the first start is not a restart
                restarts.append(row)
            if i < args.restarts:
                host.kill9()
                deadline = time.monotonic() + 30
                while status(guest).get("connected"):
                    assert time.monotonic() < deadline, "the agent never saw hostkvd go"
                    time.sleep(0.1)
        res["restarts"] = restarts

        time.sleep(2)
        res["connected_idle_wakeups"] = idle_wakeups(guest, pid, args.seconds)

        guest.unplug_port(HOSTKV_PORT)
        time.sleep(2)
        res["no_port_wakeups"] = idle_wakeups(guest, pid, args.seconds)
        with open(host.config_path, "w") as f:
            f.write("[host]\nhost.rack = replugged\n")
        host.sighup()
        t0 = time.monotonic()
        guest.hotplug_port(HOSTKV_PORT, sock)
        t_seen = wait_rack(guest, "replugged")
        offset, err_bound = clock_offset(guest)
        res["hotplug_to_visible"] = t_seen - offset - t0

        st = status(guest)
        mem = proc_status(guest, pid, "VmRSS", "VmHWM", "Threads")
        res.update(rss=mem.get("VmRSS"), hwm=mem.get("VmHWM"), threads=mem.get("Threads"),
                   modules=st.get("modules"), version=st.get("version"))
    finally:
        guest.stop(sync=False)
        host.stop()
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    ms = lambda v: "%.1f ms" % (v * 1000)  # noqa: E731
    print("accelerator: %s" % res["accelerator"])
    print("agent %s: RSS %s (high-water %s), %s threads, %s modules imported"
          % (res["version"], res["rss"], res["hwm"], res["threads"], res["modules"] or "n/a"))
    print("wakeups (context switches) in %.0f s: host away %d, connected and idle %d, port unplugged %d"
          % (args.seconds, res["away_wakeups"], res["connected_idle_wakeups"], res["no_port_wakeups"]))
    for key, label in (("connect_to_in_sync", "hostkvd connected -> agent in sync"),
                       ("connect_to_visible", "hostkvd connected -> new value visible"),
                       ("spawn_to_connect", "(hostkvd started -> connected)")):
        vals = [r[key] for r in res["restarts"] if key in r]
        if vals:
            print("%-40s median %s  max %s  (n=%d restarts)" % (label, ms(statistics.median(vals)),
                                                                 ms(max(vals)), len(vals)))
    print("port hot-plugged -> value visible: %s" % ms(res["hotplug_to_visible"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
