#!/usr/bin/env python3
"""Migration latency: from the destination resuming to the new host's value visible in the guest.

Raw QEMU, two simulated hosts (hostkvd in its own UTS namespace each, so host.hostname differs),
the destination's hostkvd connected to the incoming QEMU before the migration (as in libvirt mode).
A recorder in the guest blocks in the agent's `watch` and notes (guest CLOCK_MONOTONIC) when values.json
shows the new host.  Guest and host clocks are related by an NTP-style exchange over the exec
channel right after each landing (min-RTT of several samples; its error bound is printed).

    .venv/bin/python bench/migration_latency.py [--hops 10]

Prints median / p95 / max of resume -> visible (ms), and the target (<= 100 ms p95).

The floor twin (bench/floor.py) rides the same migrations: a second virtio-serial port in the same
guest, a minimal host writer that pushes one line on connect (connected to the destination before
the migration, like hostkvd), and a minimal guest reader that only time-stamps the line.  Per hop
and as median / p95: hostkv resume -> visible, floor resume -> line, and the ratio hostkv / floor;
plus the agent's own per-stage split (bytes at the agent, parsed, swapped, watchers answered,
cache, hooks) from ``hostkv status --json`` (``timings``), or from its log line for older agents.

``--quiet-ms N``: after the destination resumes, wait N ms before the harness touches the guest
(the exec channel's reconnect + ping, then the polling of the recorder's log) and before the
source QEMU is stopped.  Both are test-harness activity competing for the guest's one TCG vCPU and
the host's 2 cores right in the measured window; on real hosts neither exists (the source is on
another machine, there is no exec server).  Default 0 = the harness's migrate() as is.

Under TCG with ``--quiet-ms``, each hop also reports the **translation blocks** the destination
QEMU holds at the end of the quiet window (HMP ``info jit``, "TB count"): a fresh QEMU starts
with an empty translation cache, so this is the number of distinct guest code blocks the guest
ran since the resume - the cost that dominates a migration under TCG, and, unlike a time, the
same within ~2 % from hop to hop.  ``--agent-stopped`` SIGSTOPs the agent from just before each
migration to the end of its quiet window (SIGCONT then): the floor and the TB count without the
agent's publication, so two runs side by side give the agent's own share in TBs (its hostkv
figures are then not latencies and are not reported).

``--floor publish``: the floor port's reader is bench/floor.py's PUBLISH_READER, the least a
Python publication can do (decode, check, write, rename; no agent code): what any Python agent
could reach at best, beside the bare floor.  Best with ``--agent-stopped``, so the two Python
processes do not share the guest's one vCPU.
"""
import argparse
import json
import re
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import guest_clock  # noqa: E402
from bench.floor import (FLOOR_PORT, STATUS_STAGES, FloorWriter, percentile, publish_line,  # noqa: E402
                         read_floor_log, stage_split, start_floor_reader)
from tests.harness import accel  # noqa: E402
from tests.harness.guest_image import build_guest_image  # noqa: E402
from tests.harness.hostkvd_proc import HostkvdProcess, uts_prefix  # noqa: E402
from tests.harness.migration import MigrationResult, make_destination, migrate  # noqa: E402
from tests.harness.qemu_guest import QemuGuest  # noqa: E402

RECORDER = r"""
import json, socket, time, os
seq = None
log = open('/tmp/changes.log', 'a', buffering=1)
while True:
    s = socket.socket(socket.AF_UNIX); s.connect('/run/hostkv/agent.sock'); f = s.makefile('rwb')
    req = {'op': 'watch', 'key': 'host.hostname'}
    if seq is not None: req['since'] = seq
    f.write((json.dumps(req) + '\n').encode()); f.flush()
    r = json.loads(f.readline()); s.close()
    t = time.monotonic()
    if not r.get('ok'):
        time.sleep(0.05); continue
    seq = r['seq']
    with open('/run/hostkv/values.json') as v:
        doc = json.load(v)
    received = (doc.get('received_at') or 0) - time.time() + time.monotonic()   # as CLOCK_MONOTONIC
    log.write('%.6f %.6f %s\n' % (t, received, doc['values']['host.hostname']))
"""


def clock_offset(guest):
    """(guest_monotonic - host_realtime, error bound)."""
    return guest_clock.offset(lambda argv: guest.exec(argv)[1], host_clock=time.time)


def tb_count(guest):
    """Translation blocks in ``guest``'s QEMU (TCG only; None if QEMU does not say)."""
    out = guest.qmp("human-monitor-command", **{"command-line": "info jit"})
    found = re.search(r"^TB count\s+(\d+)", out or "", re.M)
    return int(found.group(1)) if found else None


def migrate_quietly(src, dst, quiet, census=None, agent_pid=None):
    """migrate() with nothing done to the guest or the source for ``quiet`` s after the resume.
    ``census`` (a list): append the destination's TB count at the end of the quiet window;
    ``agent_pid``: SIGSTOP it before the migration, SIGCONT after the quiet window."""
    if agent_pid is not None:
        src.exec(["kill", "-STOP", str(agent_pid)])
    t0 = time.monotonic()
    src.qmp("migrate", uri=dst.incoming)
    while True:
        info = src.qmp("query-migrate")
        if info.get("status") == "completed":
            break
        assert info.get("status") not in ("failed", "cancelled"), info
        assert time.monotonic() < t0 + 120, info
        time.sleep(0.02)
    resume = dst.wait_event("RESUME", timeout=30, since=t0)
    time.sleep(max(0.0, resume["t"] + quiet - time.monotonic()))
    if census is not None:
        census.append(tb_count(dst))
    src.stop(sync=False)
    dst.reconnect_exec()
    dst._exec.request({"op": "ping"}, timeout=30)
    if agent_pid is not None:
        dst.exec(["kill", "-CONT", str(agent_pid)])
    return MigrationResult(src_name=src.name, dst_name=dst.name, completed_s=None,
                           resumed_s=resume["t"] - t0, exec_back_s=None, resumed_at=resume["t"],
                           downtime_ms=info.get("downtime"), total_time_ms=info.get("total-time"))


_LOG_LINE = re.compile(r"seq (\d+): .*\(parsed in ([\d.]+) ms, published and watchers answered in "
                       r"([\d.]+) ms, cached in ([\d.]+) ms\)")


def agent_timings(guest, received_guest):
    """The agent's time stamps of its last publication (guest CLOCK_MONOTONIC): from
    ``hostkv status --json`` ``timings``, else reconstructed from an older agent's log line."""
    rc, out, err = guest.exec(["hostkv", "status", "--json"])
    try:
        timings = json.loads(out).get("timings")
    except ValueError:
        timings = None
    if timings:
        return timings, "status"
    rc, out, err = guest.exec(["tail", "-40", "/var/log/hostkv-agent.log"])
    found = [m for m in map(_LOG_LINE.search, out.splitlines()) if m]
    if not found:
        return {}, "none"
    parsed, published, cached = (float(x) / 1000.0 for x in found[-1].groups()[1:])
    # the old agent's received_at is taken right after parsing
    return {"read_at": received_guest - parsed, "parsed_at": received_guest,
            "answered_at": received_guest + published,
            "cached_at": received_guest + published + cached}, "log"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hops", type=int, default=10)
    ap.add_argument("--agent-log", action="store_true",
                    help="print the agent's log lines of the run (per-publication timings)")
    ap.add_argument("--quiet-ms", type=float, default=0,
                    help="leave the guest and the source alone for this long after the resume")
    ap.add_argument("--agent-stopped", action="store_true",
                    help="SIGSTOP the agent from before each migration to the end of its quiet "
                         "window (needs --quiet-ms): the floor and the TB count without the agent")
    ap.add_argument("--floor", choices=("bare", "publish"), default="bare",
                    help="the floor port's guest reader: bare read() (default), or the least a Python "
                         "publication can do (bench/floor.py PUBLISH_READER)")
    args = ap.parse_args()
    publish = args.floor == "publish"
    floor_line = publish_line if publish else (lambda tag, n: tag)
    floor_label = "floor (publish)" if publish else "floor"
    if args.agent_stopped and not args.quiet_ms:
        ap.error("--agent-stopped needs --quiet-ms")
    census = [] if args.quiet_ms and not accel.use_kvm() else None
    work = tempfile.mkdtemp(prefix="hkv-mig-")
    names = ("bench-host-a", "bench-host-b")
    hosts, socks = {}, {}
    for i, name in enumerate(names):
        socks[name] = os.path.join(work, "%d.sock" % i)
        hosts[name] = HostkvdProcess(os.path.join(work, name), channels=[socks[name]], config_text="",
                                     prefix=uts_prefix(name), extra_args=["--log-level", "info"]).start()
    guest = QemuGuest(work, socks[names[0]], image=build_guest_image())
    rows = []
    writer = None
    try:
        guest.start()
        guest.wait_ready(120)
        deadline = time.monotonic() + 30
        while guest.exec(["cat", "/run/hostkv/keys/host.hostname"])[1] != names[0]:
            assert time.monotonic() < deadline, guest.console_tail()
            time.sleep(0.1)
        guest.hotplug_port(FLOOR_PORT, os.path.join(work, "floor.sock"))
        writer = FloorWriter(os.path.join(work, "floor.sock"), floor_line("floor-0", 0))
        writer.wait_connected()
        start_floor_reader(guest.write_file, guest.exec, publish=publish)
        guest.exec("python3 -c \"%s\" </dev/null >/tmp/recorder.err 2>&1 &" % RECORDER.replace('"', '\\"'))
        deadline = time.monotonic() + 30
        while "floor-0" not in guest.exec(["cat", "/tmp/floor.log"])[1]:
            assert time.monotonic() < deadline, guest.exec(["cat", "/tmp/floor.err"])[1]
            time.sleep(0.1)
        time.sleep(2)
        agent_pid = json.loads(guest.exec(["hostkv", "status", "--json"])[1])["pid"] \
            if args.agent_stopped else None
        side = 0
        for hop in range(args.hops):
            target = names[1 - side]
            if os.path.exists(socks[target]):
                os.unlink(socks[target])
            dst = make_destination(guest, socks[target])
            floor_path = [p.socket_path for p in dst.ports if p.name == FLOOR_PORT][0]
            mark = hosts[target].log_size()
            dst.start()
            hosts[target].wait_log("connected to %s" % socks[target], timeout=20, after=mark)
            line = "floor-%d" % (hop + 1)
            next_writer = FloorWriter(floor_path, floor_line(line, hop + 1))
            next_writer.wait_connected()
            result = migrate_quietly(guest, dst, args.quiet_ms / 1000.0, census, agent_pid) \
                if args.quiet_ms else migrate(guest, dst)
            writer.close()
            writer = next_writer
            guest, side = dst, 1 - side
            resumed_host = result.resumed_at + (time.time() - time.monotonic())
            deadline = time.monotonic() + 20
            seen = floor_t = None
            while seen is None or floor_t is None:
                rc, out, err = guest.exec(["cat", "/tmp/changes.log"])
                for row in out.splitlines():
                    t, received, value = row.split(" ", 2)
                    if value == target:
                        seen, got = float(t), float(received)
                rc, out, err = guest.exec(["cat", "/tmp/floor.log"])
                for t, text in read_floor_log(out):
                    if text == line:
                        floor_t = t
                assert time.monotonic() < deadline, "hop %d: hostkv %s floor %s:\n%s" % (
                    hop + 1, seen, floor_t, guest.console_tail())
                if seen is None or floor_t is None:
                    time.sleep(0.1)
            offset, err_bound = clock_offset(guest)
            resumed_guest = resumed_host + offset
            timings, source = agent_timings(guest, got)
            row = {"hostkv": (seen - resumed_guest) * 1000, "floor": (floor_t - resumed_guest) * 1000,
                   "clock_error": err_bound * 1000, "downtime": result.downtime_ms,
                   "stages": stage_split(timings, resumed_guest), "stages_from": source}
            row["ratio"] = row["hostkv"] / row["floor"] if row["floor"] > 0 else float("inf")
            rows.append(row)
            guest.exec(": > /tmp/changes.log")
            row["tbs"] = census[-1] if census else None
            tbs = "; %s TBs at +%d ms" % (row["tbs"], args.quiet_ms) if row["tbs"] is not None else ""
            if args.agent_stopped:
                print("hop %2d -> %s: agent stopped; floor resume -> line %.1f ms (clock error <= %.1f ms; "
                      "downtime %s ms%s)" % (hop + 1, target, row["floor"], row["clock_error"],
                                             result.downtime_ms, tbs))
                continue
            print("hop %2d -> %s: hostkv resume -> visible %.1f ms, floor resume -> line %.1f ms, "
                  "ratio %.2f (clock error <= %.1f ms; downtime %s ms%s)"
                  % (hop + 1, target, row["hostkv"], row["floor"], row["ratio"], row["clock_error"],
                     result.downtime_ms, tbs))
            print("        agent (%s): %s" % (source, ", ".join(
                "%s +%.1f" % (label, ms) for label, ms in sorted(row["stages"].items(),
                                                                  key=lambda kv: kv[1]))))
        if args.agent_log:
            rc, out, err = guest.exec(["cat", "/var/log/hostkv-agent.log"])
            print("agent log:\n" + "\n".join("  " + line for line in out.splitlines()[-8 * args.hops:]))
    finally:
        if writer is not None:
            writer.close()
        guest.stop(sync=False)
        for h in hosts.values():
            h.stop()
    print("accelerator: %s; quiet window after resume: %d ms" % (accel.describe(), args.quiet_ms))

    def fig(values):
        return "median %6.1f  p95 %6.1f  max %6.1f" % (statistics.median(values), percentile(values, 95),
                                                      max(values))
    hk, fl = [r["hostkv"] for r in rows], [r["floor"] for r in rows]
    tb_rows = [r["tbs"] for r in rows if r.get("tbs") is not None]
    if tb_rows:
        print("TBs translated by the destination by +%d ms (%s): median %d, min %d, max %d" % (
            args.quiet_ms, "agent stopped" if args.agent_stopped else "agent running",
            statistics.median(tb_rows), min(tb_rows), max(tb_rows)))
    if args.agent_stopped:
        print("%-6s resume -> line (ms):      %s" % (floor_label, fig(fl)))
        return
    print("hostkv resume -> visible (ms):   %s  (n=%d, clock error median %.1f ms)"
          % (fig(hk), len(rows), statistics.median(r["clock_error"] for r in rows)))
    print("%-6s resume -> line (ms):      %s" % (floor_label, fig(fl)))
    print("ratio hostkv / floor per hop:    %s" % fig([r["ratio"] for r in rows]))
    print("ratio of medians %.2f, ratio of p95s %.2f (%s)" % (
        statistics.median(hk) / statistics.median(fl), percentile(hk, 95) / percentile(fl, 95),
        "to the publishing floor: the goal is set against the bare one" if publish else
        "goal <= 2 at p95 under TCG: %s" % ("met" if percentile(hk, 95) <= 2 * percentile(fl, 95)
                                            else "NOT met")))
    labels = [label for _key, label in STATUS_STAGES]
    for label in labels:
        vals = [r["stages"][label] for r in rows if label in r["stages"]]
        if vals:
            print("  agent stage %-18s after resume: median %6.1f  p95 %6.1f ms"
                  % (label, statistics.median(vals), percentile(vals, 95)))
    print("target p95 <= 100 ms: %s" % ("met" if percentile(hk, 95) <= 100 else "NOT met"))


if __name__ == "__main__":
    main()
