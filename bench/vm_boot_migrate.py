#!/usr/bin/env python3
"""Benchmark of the real-VM test harness: boot time, exec round trip, live migration, and an
HTTP-over-user-mode-virtio-net baseline (the guest GETs from a host unix-socket HTTP server
through slirp's guestfwd, the "metadata server" way hostkv is compared against).

Usage (from the repo root):
    .venv/bin/python bench/vm_boot_migrate.py [--boots 3] [--hops 4] [--execs 50]
                                              [--http 200] [--json]
Prints one line per figure (min / median / max) or, with --json, one JSON object.
"""

import argparse
import http.server
import json
import os
import socketserver
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.harness import accel  # noqa: E402
from tests.harness.guest_image import build_guest_image  # noqa: E402
from tests.harness.migration import MigrationPair  # noqa: E402
from tests.harness.qemu_guest import QemuGuest, unix_forward  # noqa: E402

GUEST_HTTP_LOOP = r"""
import sys, time, http.client
n = int(sys.argv[1])
c = http.client.HTTPConnection('10.0.2.100', 80, timeout=20)
c.request('GET', '/host.hostname'); c.getresponse().read()   # connect + warm up
t = []
for i in range(n):
    t0 = time.monotonic()
    c.request('GET', '/host.hostname')
    r = c.getresponse(); r.read()
    t.append(time.monotonic() - t0)
print(' '.join('%.6f' % x for x in t))
"""


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"       # keep-alive: one guestfwd connection for the loop
    wbufsize = 64 * 1024                # one write per response (as in channel_roundtrip.py):
                                        # headers and body apart trip Nagle/delayed ACK (~40 ms)

    def do_GET(self):
        body = b"benchhost.example.org"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def stats(values):
    return {"n": len(values), "min": min(values), "median": statistics.median(values),
            "max": max(values)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--boots", type=int, default=3)
    ap.add_argument("--hops", type=int, default=4)
    ap.add_argument("--execs", type=int, default=50)
    ap.add_argument("--http", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    out = {"accel": accel.describe()}
    t0 = time.monotonic()
    image = build_guest_image()
    out["image_s"] = time.monotonic() - t0
    out["initrd_mb"] = os.path.getsize(image.initrd) / 1e6
    work = tempfile.mkdtemp(prefix="vmbench-")
    http_path = os.path.join(work, "http.sock")
    server = socketserver.ThreadingUnixStreamServer(http_path, _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    boots, uptimes = [], []
    for i in range(args.boots):
        g = QemuGuest(work, os.path.join(work, "a.sock"), name="b%d" % i, image=image,
                      state_disk=None, noagent=True)
        g.start()
        try:
            boots.append(g.wait_ready(120))
            uptimes.append(g.guest_uptime_at_ready)
        finally:
            g.stop()
    out["boot_s"] = stats(boots)
    out["guest_uptime_at_ready_s"] = stats(uptimes)

    g = QemuGuest(work, os.path.join(work, "a.sock"), name="m", image=image, noagent=True,
                  guestfwd=[("10.0.2.100", 80, unix_forward(http_path))])
    g.start()
    pair = MigrationPair(g, os.path.join(work, "a.sock"), os.path.join(work, "b.sock"))
    try:
        g.wait_ready(120)
        rt = []
        for _ in range(args.execs):
            t = time.monotonic()
            g.exec(["true"], timeout=30)
            rt.append(time.monotonic() - t)
        out["exec_roundtrip_s"] = stats(rt)
        if args.http:
            g.exec(["sh", "-c", "cat > /tmp/httploop.py"], stdin=GUEST_HTTP_LOOP, check=True)
            rc, so, se = g.exec(["python3", "/tmp/httploop.py", str(args.http)], timeout=300,
                                check=True)
            out["guest_http_get_s"] = stats([float(x) for x in so.split()])
        hops = [pair.hop() for _ in range(args.hops)]
        out["migration_completed_s"] = stats([h.completed_s for h in hops])
        out["migration_resumed_s"] = stats([h.resumed_s for h in hops])
        out["migration_exec_back_s"] = stats([h.exec_back_s for h in hops])
        out["migration_downtime_ms"] = stats([h.downtime_ms or 0 for h in hops])
    finally:
        pair.stop()
        server.shutdown()
        server.server_close()

    if args.json:
        print(json.dumps(out, indent=1, sort_keys=True))
        return
    for key in sorted(out):
        v = out[key]
        if isinstance(v, dict):
            print("%-28s n=%-4d min %.4f  median %.4f  max %.4f" % (key, v["n"], v["min"],
                                                                    v["median"], v["max"]))
        elif isinstance(v, float):
            print("%-28s %.3f" % (key, v))
        else:
            print("%-28s %s" % (key, v))


if __name__ == "__main__":
    main()
