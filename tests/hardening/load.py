"""Load scenario shared by tests/hardening/test_hardening_load.py and bench/hardening_load.py.

:func:`run_load` starts the real hostkvd on four guest ports: one well-behaved guest driven from
this process, and three hostile guests each in its own process (tests/hardening/offender.py:
``flood``, ``fast``, ``malformed``).  It measures the well-behaved guest's ping round trip with
the offenders connected but idle (unloaded), then again while they attack (loaded), samples
hostkvd's memory from /proc/PID/status throughout, and returns a dict of figures:

  ``unloaded``/``loaded``: {"p50","p99","max"} in milliseconds over ``samples`` round trips;
  ``ratio_p99``: loaded p99 / unloaded p99;
  ``rss_max_kib``/``hwm_kib``: hostkvd's largest VmRSS seen and its VmHWM at the end;
  ``offenders``: mode -> the offender's own statistics (see offender.py);
  ``status``/``status_during``: hostkvd's {"op":"status"} channels by label, taken at the end
  (offenders gone) and during the attack (right after the loaded measurement);
  ``lost``: well-behaved pings that got no pong (must be 0).
"""

import json
import os
import subprocess
import sys
import threading
import time

from tests.harness.fake_port import FakePort
from tests.harness.hostkvd_proc import HostkvdProcess, PYTHONPATH

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = ("flood", "fast", "malformed")


def read_proc_status(pid):
    """VmRSS and VmHWM of ``pid`` in KiB."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0])
    return out


class MemorySampler(threading.Thread):
    """Samples a process's VmRSS every ``interval`` seconds until :meth:`stop`."""

    def __init__(self, pid, interval=0.05):
        threading.Thread.__init__(self, daemon=True)
        self.pid = pid
        self.interval = interval
        self.max_rss = 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            try:
                self.max_rss = max(self.max_rss, read_proc_status(self.pid)["VmRSS"])
            except (OSError, KeyError):
                return
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(5)


class PingClient(object):
    """The well-behaved guest: sequential ping/pong round trips on an accepted FakePort."""

    def __init__(self, port):
        self.port = port
        self.next_id = 1000
        self.lost = 0

    def round_trips(self, samples, pause=0.0):
        times = []
        for _ in range(samples):
            self.next_id += 1
            t0 = time.perf_counter()
            self.port.send(b'{"op":"ping","id":%d}\n' % self.next_id)
            try:
                frame = self.port.frame_where(lambda f: f.get("op") == "pong", timeout=5)
            except AssertionError:
                self.lost += 1
                continue
            times.append(time.perf_counter() - t0)
            if frame.get("id") != self.next_id:
                self.lost += 1
            if pause:
                time.sleep(pause)
        return times


def summarize(times):
    s = sorted(times)
    if not s:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))] * 1000.0
    return {"p50": round(pick(0.50), 3), "p99": round(pick(0.99), 3), "max": round(s[-1] * 1000.0, 3),
            "n": len(s)}


def start_offender(mode, path, seconds):
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "offender.py"), mode, str(path),
                             str(seconds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=PYTHONPATH))
    return proc


def _wait_line(proc, expect, timeout):
    result = {}

    def read():
        result["line"] = proc.stdout.readline()
    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    line = result.get("line", b"")
    if not line.strip() or (expect and line.strip() != expect):
        raise AssertionError("offender %s said %r instead of %r" % (proc.args[2], line, expect))
    return line


def run_load(workdir, seconds=8.0, samples=2000, pause=0.002, modes=MODES):
    """Run the scenario described in the module docstring; returns the figures."""
    workdir = str(workdir)
    good = FakePort(os.path.join(workdir, "good.sock"))
    paths = {m: os.path.join(workdir, m + ".sock") for m in modes}
    offenders = {m: start_offender(m, paths[m], seconds) for m in modes}
    daemon = HostkvdProcess(workdir, channels=[good.path] + [paths[m] for m in modes],
                            host_id="load-host", config_text="[host]\nhost.rack = r1\n",
                            extra_args=["--log-level", "info"])
    sampler = None
    try:
        # the offenders bind their sockets before hostkvd starts: wait for the files
        deadline = time.monotonic() + 10
        while not all(os.path.exists(p) for p in paths.values()):
            if time.monotonic() > deadline:
                raise AssertionError("offender sockets did not appear")
            time.sleep(0.01)
        daemon.start()
        pid = daemon.proc.pid
        sampler = MemorySampler(pid)
        sampler.start()
        good.accept()
        assert good.frame()["op"] == "snapshot"
        for m in modes:
            _wait_line(offenders[m], b"ready", 15)
        client = PingClient(good)
        client.round_trips(200, pause)                      # warm up
        unloaded = client.round_trips(samples, pause)
        for m in modes:
            offenders[m].stdin.write(b"go\n")
            offenders[m].stdin.flush()
        time.sleep(0.05)
        t0 = time.monotonic()
        loaded = client.round_trips(samples, pause)
        loaded_span = time.monotonic() - t0
        during = daemon.control({"op": "status"})["status"]
        stats = {}
        for m in modes:
            stats[m] = json.loads(_wait_line(offenders[m], None, seconds + 30).decode())
        status = daemon.control({"op": "status"})["status"]
        mem = read_proc_status(pid)
        sampler.stop()
        figures = {
            "unloaded": summarize(unloaded), "loaded": summarize(loaded),
            "loaded_span_s": round(loaded_span, 2), "attack_s": seconds,
            "rss_max_kib": max(sampler.max_rss, mem["VmRSS"]), "hwm_kib": mem["VmHWM"],
            "offenders": stats, "lost": client.lost,
            "status": {c["label"]: c for c in status["channels"]},
            "status_during": {c["label"]: c for c in during["channels"]},
            "log": daemon.log_path,
        }
        u, l = figures["unloaded"]["p99"], figures["loaded"]["p99"]
        figures["ratio_p99"] = round(l / u, 2) if u else None
        return figures
    finally:
        if sampler is not None:
            sampler.stop()
        for proc in offenders.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            proc.stdin.close()
            proc.stdout.close()
        daemon.stop()
        good.close()


if __name__ == "__main__":
    import pprint
    import tempfile
    d = tempfile.mkdtemp(prefix="hostkv-load-")
    pprint.pprint(run_load(d, float(sys.argv[1]) if len(sys.argv) > 1 else 8.0))
