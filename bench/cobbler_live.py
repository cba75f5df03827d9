#!/usr/bin/env python3
"""Benchmark: Cobbler as the live key source (issue 14) at fleet scale.

One real cobblerd 3.3.10 (tests/harness/cobbler_server.py, its own mount namespace, 127.0.0.1):

  * pollers: N (default 1,000) simulated hostkvd pollers, each calling ``last_modified_time()``
    every ``--interval`` seconds (default 5 s, hostkvd's default) through hostkvd's own XML-RPC
    client (hostkv.hostkvd.keysources.cobbler.Client), phases spread uniformly over one interval.
    They run as P processes x N/P threads ON THIS SAME 2-core machine as cobblerd, so the latency
    includes client-side scheduling: an upper bound of what a poller on its own host would see.
    They talk to cobblerd's XML-RPC port directly (in production Apache's mod_proxy sits in
    front; the harness's Python front would measure itself, not Cobbler; ``--via-front`` to see it).
    Measured: cobblerd's CPU (utime+stime of its process, all threads) over the first half of the
    window (polls only; the edits of the fan-out part come in the second half), and the poll
    latency p50/p99/max over the whole window.
  * fan-out: the real hostkvd (``--channel-dir``) with ``[cobbler]`` at the default interval and
    G (default 1,000) simulated guest channels (bench/fanout.py's simulator: real protocol sessions
    on unix sockets, what QEMU's chardev sockets are).  One admin edit of this host's Cobbler system
    (``modify_system`` + ``save_system`` of ``hostkv_host_fanout``, what cobbler-web sends) ->
    the time until the first / last of the G guests holds the new ``host.fanout``.  Measured with
    nothing else running, then again while the N pollers load cobblerd.  The figure includes the
    wait for hostkvd's next poll (uniform in 0..interval by construction), which is the point:
    it is what an admin waits.

What is NOT measured here: 1,000 guests whose own ``vm.*`` keys change in one edit (a profile
edit): each needs a libvirt domain-metadata write, i.e. 1,000 real domains; see bench/README.md.

Usage (root, repo root):  .venv/bin/python bench/cobbler_live.py [--pollers 1000] [--procs 4]
[--window 60] [--guests 1000] [--rounds 3] [--interval 5] [--json]
"""

import argparse
import json
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from tests.harness import PYTHONPATH, use_checkout  # noqa: E402

use_checkout()

FANOUT = os.path.join(REPO, "bench", "fanout.py")
sys.path.insert(0, os.path.dirname(FANOUT))
from fanout import read_event  # noqa: E402  (its simulator's event reader; the simulator is run from there too)
HOST_SYSTEM = "bench-kvm-host"


def pct(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))]


# ---------------------------------------------------------------- pollers (child processes)

def poller_proc(url, count, interval, start_at, stop_at, out):
    """``count`` poller threads until ``stop_at`` (time.time()); sends (latencies, failures)."""
    from hostkv.hostkvd.keysources.cobbler import Client, CobblerError
    lat, fails = [], []
    lock = threading.Lock()

    def one():
        client = Client(url, 10.0)
        next_at = start_at + random.uniform(0, interval)
        while True:
            delay = next_at - time.time()
            if delay > 0:
                time.sleep(delay)
            if time.time() >= stop_at:
                return
            t0 = time.monotonic()
            try:
                client.last_modified_time()
                ok = True
            except CobblerError as err:
                ok = False
                msg = str(err)[:120]
            took = time.monotonic() - t0
            with lock:
                (lat.append(took) if ok else fails.append(msg))
            next_at = max(next_at + interval, time.time())

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.send((lat, fails))
    out.close()


class Pollers(object):
    def __init__(self, url, n, procs, interval, window, warmup):
        self.start_at = time.time() + 1.0
        self.measure_from = self.start_at + warmup
        self.stop_at = self.measure_from + window
        self.children = []
        per = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        for count in per:
            parent, child = multiprocessing.Pipe(duplex=False)
            p = multiprocessing.Process(target=poller_proc, daemon=True,   # never outlive a failed run
                                        args=(url, count, interval, self.start_at, self.stop_at, child))
            p.start()
            self.children.append((p, parent))

    def kill(self):
        for p, _conn in self.children:
            if p.is_alive():
                p.terminate()
                p.join(5)

    def results(self):
        lat, fails = [], []
        for p, conn in self.children:
            a, b = conn.recv()
            lat += a
            fails += b
            p.join(30)
        return lat, fails


# ---------------------------------------------------------------- cobblerd's CPU

def cobblerd_pid(popen_pid):
    """The cobblerd process (the harness starts it through nsenter, which may or may not fork)."""
    pid = popen_pid
    for _ in range(3):
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            if b"cobblerd" in f.read() and not open("/proc/%d/comm" % pid).read().startswith("nsenter"):
                return pid
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            kids = f.read().split()
        if not kids:
            break
        pid = int(kids[0])
    return popen_pid


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))


# ---------------------------------------------------------------- fan-out

EDIT_FAILURES = []


def edit_host_record(cobbler, value, attempts=5):
    """The admin's edit (a fresh connection each time, like a browser's request through Apache);
    an attempt the loaded server drops is retried and counted in EDIT_FAILURES."""
    import xmlrpc.client
    for attempt in range(attempts):
        try:
            api = xmlrpc.client.ServerProxy(cobbler.api_url, allow_none=True)
            token = cobbler.token
            meta = dict(api.get_system(HOST_SYSTEM)["autoinstall_meta"])
            meta["hostkv_host_fanout"] = value
            handle = api.get_system_handle(HOST_SYSTEM, token)
            api.modify_system(handle, "autoinstall_meta", meta, token)
            api.save_system(handle, token)
            return
        except (OSError, xmlrpc.client.ProtocolError, ConnectionError) as err:
            EDIT_FAILURES.append("%s: %s" % (type(err).__name__, str(err)[:100]))
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)


def fanout_rounds(cobbler, sim, n, rounds, tag, interval, control_path):
    from hostkv.hostkvctl import control_client
    out = []
    for i in range(rounds):
        value = "%s-%d" % (tag, i)
        time.sleep(random.uniform(0, interval))  # any phase of hostkvd's poll cycle
        edit_host_record(cobbler, value)
        t0, w0 = time.monotonic(), time.time()   # the edit is saved: what the admin's click returned
        seen = read_event(sim, "all-seen", 120)
        if seen["value"] != value:
            raise RuntimeError("simulator saw %r, expected %r" % (seen["value"], value))
        times = sorted(t - t0 for t in seen["times"])
        # the poll that saw the change: hostkvd's last poll start (wall clock, this machine)
        ks = control_client.request(control_path, {"op": "status"}, 10)["status"]["keysources"]["cobbler"]
        after_poll = w0 + times[-1] - ks["last_poll"]
        out.append({"first_s": times[0], "median_s": statistics.median(times), "last_s": times[-1],
                    "spread_s": times[-1] - times[0], "poll_to_last_s": after_poll})
        print("  %s round %d: edit saved -> first guest %.3f s, last of %d guests %.3f s (spread %.3f s; "
              "hostkvd's poll -> last guest %.3f s)" % (tag, i + 1, times[0], n, times[-1],
                                                         times[-1] - times[0], after_poll), flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pollers", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--guests", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--via-front", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from tests.harness.cobbler_server import CobblerServer
    work = tempfile.mkdtemp(prefix="hostkv-cbench-")
    result = {"pollers": args.pollers, "interval_s": args.interval, "guests": args.guests,
              "cores": os.cpu_count()}
    sim = hostkvd = pollers = None
    cobbler = CobblerServer().start()
    try:
        boot = os.path.join(work, "boot")
        os.makedirs(boot)
        for name in ("vmlinuz", "initrd.img"):
            with open(os.path.join(boot, name), "w") as f:
                f.write("not a kernel\n")
        cobbler.cli(["distro", "add", "--name=bd", "--arch=x86_64", "--breed=redhat", "--os-version=rhel9",
                     "--kernel=" + os.path.join(boot, "vmlinuz"), "--initrd=" + os.path.join(boot, "initrd.img")])
        cobbler.cli(["profile", "add", "--name=bp", "--distro=bd"])
        cobbler.cli(["system", "add", "--name=" + HOST_SYSTEM, "--profile=bp",
                     "--autoinstall-meta=hostkv_host_fanout=start"])
        direct = "http://127.0.0.1:%d/" % cobbler.xmlrpc_port
        url = cobbler.api_url if args.via_front else direct
        result["poll_target"] = "front (harness WSGI proxy)" if args.via_front else "cobblerd XML-RPC port"
        cpid = cobblerd_pid(cobbler.cobblerd.pid)

        # the fan-out world: real hostkvd, G simulated guests
        env = dict(os.environ, PYTHONPATH=PYTHONPATH)
        chan_dir = os.path.join(work, "ch")
        os.makedirs(chan_dir)
        sim = subprocess.Popen([sys.executable, FANOUT, "--simulate", chan_dir, str(args.guests)],
                               stdout=subprocess.PIPE, env=env)
        read_event(sim, "ready", 120)
        conf = os.path.join(work, "hostkvd.conf")
        with open(conf, "w") as f:
            f.write("[cobbler]\nserver = %s\ninterval = %g\nhost_system = %s\ncache = %s\n"
                    % (cobbler.api_url, args.interval, HOST_SYSTEM, os.path.join(work, "cache.json")))
        log = open(os.path.join(work, "hostkvd.log"), "wb")
        ctl = os.path.join(work, "c.sock")
        hostkvd = subprocess.Popen([sys.executable, "-m", "hostkv.hostkvd", "--config", conf,
                                    "--control-socket", ctl, "--channel-dir", chan_dir,
                                    "--host-id", "cobbler-bench", "--log-level", "warning"],
                                   stdout=log, stderr=log, env=env)
        seen = read_event(sim, "all-seen", 120)
        if seen["value"] != "start":
            raise RuntimeError("first value %r" % seen["value"])
        print("fan-out, cobblerd otherwise idle (hostkvd interval %g s, %d guests):" % (args.interval, args.guests))
        result["fanout_idle"] = fanout_rounds(cobbler, sim, args.guests, args.rounds, "idle", args.interval, ctl)

        # cobblerd idle CPU baseline (hostkvd's own poll only)
        c0, t0 = cpu_seconds(cpid), time.monotonic()
        time.sleep(10)
        result["cobblerd_idle_cpu_percent"] = 100.0 * (cpu_seconds(cpid) - c0) / (time.monotonic() - t0)

        print("%d pollers every %g s for %g s (after %g s warm-up) against the %s ..."
              % (args.pollers, args.interval, args.window, args.warmup, result["poll_target"]), flush=True)
        pollers = Pollers(url, args.pollers, args.procs, args.interval, args.window, args.warmup)
        time.sleep(max(0.0, pollers.measure_from - time.time()))
        # cobblerd's CPU over the first half of the window: polls only, no edit
        c0, t0 = cpu_seconds(cpid), time.monotonic()
        time.sleep(args.window / 2.0)
        c1, t1 = cpu_seconds(cpid), time.monotonic()
        polls_in_cpu_window = args.pollers / args.interval * (t1 - t0)
        print("fan-out while the pollers run:")
        result["fanout_loaded"] = fanout_rounds(cobbler, sim, args.guests, args.rounds, "loaded", args.interval, ctl)
        time.sleep(max(0.0, pollers.stop_at - time.time()))
        lat, fails = pollers.results()
        result.update({
            "cobblerd_cpu_percent": 100.0 * (c1 - c0) / (t1 - t0),
            "cobblerd_cpu_ms_per_poll": 1000.0 * (c1 - c0) / polls_in_cpu_window,
            "polls": len(lat), "poll_rate_per_s": args.pollers / args.interval, "failed_polls": len(fails),
            "failures_sample": sorted(set(fails))[:3], "admin_edit_failures": list(EDIT_FAILURES),
            "poll_p50_ms": 1000 * pct(lat, 50), "poll_p99_ms": 1000 * pct(lat, 99),
            "poll_max_ms": 1000 * max(lat) if lat else None})
    finally:
        if pollers is not None:
            pollers.kill()
        for p in (hostkvd, sim):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        cobbler.stop()
        shutil.rmtree(work, ignore_errors=True)

    last = [r["last_s"] for r in result["fanout_idle"]]
    last_l = [r["last_s"] for r in result["fanout_loaded"]]
    spread = [r["spread_s"] for r in result["fanout_idle"] + result["fanout_loaded"]]
    after_poll = [r["poll_to_last_s"] for r in result["fanout_idle"] + result["fanout_loaded"]]
    if result.get("cobblerd_cpu_ms_per_poll"):
        # the fleet at which the polls alone keep half of one core busy (cobblerd is one Python process)
        result["fleet_for_half_core"] = int(0.5 * args.interval / (result["cobblerd_cpu_ms_per_poll"] / 1000.0))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("cobblerd: %.1f %% CPU idle (one hostkvd), %.1f %% with %d pollers (%.0f polls/s), "
              "%.2f ms CPU per poll; poll p50 %.1f ms, p99 %.1f ms, max %.1f ms over %d polls, %d failed"
              % (result["cobblerd_idle_cpu_percent"], result["cobblerd_cpu_percent"], args.pollers,
                 result["poll_rate_per_s"], result["cobblerd_cpu_ms_per_poll"] or 0, result["poll_p50_ms"],
                 result["poll_p99_ms"], result["poll_max_ms"] or 0, result["polls"], result["failed_polls"]))
        print("one edit -> last of %d guests: idle %s s, under load %s s; first-to-last spread max %.3f s; "
              "hostkvd's poll -> last guest max %.3f s"
              % (args.guests, "/".join("%.2f" % x for x in last), "/".join("%.2f" % x for x in last_l),
                 max(spread), max(after_poll)))
        if EDIT_FAILURES:
            print("the admin's edit (through the front) was dropped %d time(s) and retried: %s"
                  % (len(EDIT_FAILURES), "; ".join(sorted(set(EDIT_FAILURES)))))
        if result["failures_sample"]:
            print("poll failures: %s" % "; ".join(result["failures_sample"]))
        if "fleet_for_half_core" in result:
            print("polls alone keep half of cobblerd's core busy at ~%d hosts (interval %g s)"
                  % (result["fleet_for_half_core"], args.interval))
    return 0


if __name__ == "__main__":
    sys.exit(main())
