#!/usr/bin/env python3
"""Benchmark: one hostkvd serving N (default 1,000) guest channels.

The guests are simulated by ONE separate process holding N unix socket servers (what QEMU's
chardev ``server=on`` sockets are); each accepted connection runs hostkv.protocol.GuestSession
like the real agent (hello + sync, then snapshots).  hostkvd is the real daemon
(``python -m hostkv.hostkvd --channel-dir DIR``).  Measured:

  * startup: hostkvd start -> every guest holds its first snapshot;
  * fanout: a ``host-set`` on the control socket -> the new value received by the 1st / median /
    last guest (receive times taken with CLOCK_MONOTONIC, which is shared by all processes);
  * hostkvd's RSS with N channels connected;
  * idle: hostkvd's CPU time and context switches (wakeups) over ``--idle`` seconds with nothing
    changing.

Usage (from the repo root):  .venv/bin/python bench/fanout.py [--channels 1000] [--rounds 5]
[--idle 10] [--json].  Needs about 3 file descriptors per channel (it raises its own limit).
"""

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from tests.harness import PYTHONPATH, use_checkout  # noqa: E402

use_checkout()


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(need, soft), hard), hard))


# ---------------------------------------------------------------- the simulator (child process)

def simulate(directory, count):
    """Serve ``count`` sockets in ``directory``; report on stdout (one JSON object per line)."""
    from hostkv import protocol
    raise_nofile(3 * count + 100)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    first = {}                 # idx -> time of first snapshot
    seen = {}                  # value of host.fanout -> list of receive times

    def report(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    async def guest(idx, reader, writer):
        sess = protocol.GuestSession(agent_name="fanout-sim")
        sess.connect()
        writer.write(sess.data_to_send())
        last = None
        while True:
            data = await reader.read(65536)
            if not data:
                break
            now = time.monotonic()
            for ev in sess.receive(data):
                if isinstance(ev, protocol.SnapshotReceived):
                    if idx not in first:
                        first[idx] = now
                        if len(first) == count:
                            report({"event": "all-connected", "t": now})
                    value = ev.snapshot.values.get("host.fanout")
                    if value is not None and value != last:
                        last = value
                        times = seen.setdefault(value, [])
                        times.append(now)
                        if len(times) == count:
                            report({"event": "all-seen", "value": value, "times": times})
            out = sess.data_to_send()
            if out:
                writer.write(out)

    async def main():
        servers = []
        for i in range(count):
            path = os.path.join(directory, "g%04d.sock" % i)
            servers.append(await asyncio.start_unix_server(
                lambda r, w, i=i: guest(i, r, w), path=path))
        report({"event": "ready"})
        await asyncio.Event().wait()

    loop.run_until_complete(main())


# ---------------------------------------------------------------- the benchmark (parent)

def proc_stats(pid):
    """(rss_kib, cpu_seconds, context_switches over all threads)."""
    with open("/proc/%d/status" % pid) as f:
        rss = int([line for line in f if line.startswith("VmRSS:")][0].split()[1])
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / float(ticks)
    switches = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
            for line in f:
                if "ctxt_switches" in line:
                    switches += int(line.split()[1])
    return rss, cpu, switches


def control(path, obj):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(path)
    s.sendall(json.dumps(obj).encode() + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    s.close()
    return json.loads(data)


def read_event(sim, want, timeout):
    """Next JSON line from the simulator whose event is ``want``."""
    import select
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sim.stdout], [], [], left)[0]:
            raise RuntimeError("simulator never reported %s" % want)
        line = sim.stdout.readline()
        if not line:
            raise RuntimeError("simulator exited (%s)" % sim.poll())
        obj = json.loads(line)
        if obj["event"] == want:
            return obj


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--channels", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--simulate", nargs=2, metavar=("DIR", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.simulate:
        return simulate(args.simulate[0], int(args.simulate[1]))

    n = args.channels
    work = tempfile.mkdtemp(prefix="hostkv-fanout-")
    chan_dir = os.path.join(work, "channels")
    os.makedirs(chan_dir)
    env = dict(os.environ, PYTHONPATH=PYTHONPATH)
    sim = hostkvd = None
    result = {"channels": n}
    try:
        sim = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--simulate", chan_dir, str(n)],
                               stdout=subprocess.PIPE, env=env, preexec_fn=lambda: raise_nofile(3 * n + 100))
        read_event(sim, "ready", 60)
        conf = os.path.join(work, "hostkvd.conf")
        ctl = os.path.join(work, "hostkvd.sock")
        with open(conf, "w") as f:
            f.write("[host]\nhost.fanout = start\n")
        log = open(os.path.join(work, "hostkvd.log"), "wb")
        t_start = time.monotonic()
        hostkvd = subprocess.Popen([sys.executable, "-m", "hostkv.hostkvd", "--config", conf,
                                    "--control-socket", ctl, "--channel-dir", chan_dir,
                                    "--host-id", "fanout-bench", "--log-level", "warning"],
                                   stdout=log, stderr=log, env=env,
                                   preexec_fn=lambda: raise_nofile(2 * n + 100))
        connected = read_event(sim, "all-connected", 120)
        result["startup_all_served_s"] = connected["t"] - t_start
        read_event(sim, "all-seen", 30)   # value "start"
        time.sleep(1.0)
        rss, _cpu, _sw = proc_stats(hostkvd.pid)
        result["hostkvd_rss_mib"] = rss / 1024.0

        rounds = []
        for i in range(args.rounds):
            value = "round-%d" % i
            t0 = time.monotonic()
            reply = control(ctl, {"op": "host-set", "values": {"host.fanout": value}})
            t_reply = time.monotonic()
            if not reply.get("ok"):
                raise RuntimeError("host-set failed: %r" % reply)
            seen = read_event(sim, "all-seen", 60)
            if seen["value"] != value:
                raise RuntimeError("simulator saw %r, expected %r" % (seen["value"], value))
            times = sorted(t - t0 for t in seen["times"])
            rounds.append({"reply_s": t_reply - t0, "first_s": times[0],
                           "median_s": statistics.median(times), "last_s": times[-1]})
            if not args.json:
                print("round %d: control reply %.3fs, first guest %.3fs, median %.3fs, all %d guests %.3fs"
                      % (i + 1, t_reply - t0, times[0], statistics.median(times), n, times[-1]))
            time.sleep(0.5)
        result["fanout_rounds"] = rounds
        result["fanout_all_median_s"] = statistics.median(r["last_s"] for r in rounds)

        time.sleep(1.0)
        _rss, cpu0, sw0 = proc_stats(hostkvd.pid)
        time.sleep(args.idle)
        _rss, cpu1, sw1 = proc_stats(hostkvd.pid)
        result["idle_seconds"] = args.idle
        result["idle_cpu_percent"] = 100.0 * (cpu1 - cpu0) / args.idle
        result["idle_wakeups_per_s"] = (sw1 - sw0) / args.idle
    finally:
        for p in (hostkvd, sim):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("%d channels: all served %.2fs after hostkvd start; RSS %.1f MiB; host set -> all guests "
              "median %.3fs; idle %.2f%% CPU, %.1f wakeups/s over %.0fs"
              % (n, result["startup_all_served_s"], result["hostkvd_rss_mib"], result["fanout_all_median_s"],
                 result["idle_cpu_percent"], result["idle_wakeups_per_s"], args.idle))
    return 0


if __name__ == "__main__":
    sys.exit(main())
