#!/usr/bin/env python3
"""Guest-observed round trip of a live `get` over virtio-serial vs an HTTP metadata server.

Both are measured in the SAME guest, in one run, from one in-guest Python loop each:
  * hostkv: `hostkv get --live`'s path without the CLI's process start-up: a persistent
    connection to the agent's control socket, request {"op":"get","live":true}; the agent
    forwards it over org.hostkv.0 to the real hostkvd and returns the host's reply;
  * baseline: the classic alternative, an HTTP metadata server (keep-alive HTTP/1.1) reached
    over user-mode virtio-net (slirp guestfwd to a host unix socket) serving the same key.
Also the full `hostkv get KEY` command (process start-up + reading the published file).

    .venv/bin/python bench/channel_roundtrip.py [-n 300]

Prints median and p95 of each and the ratio HTTP/hostkv (>1: hostkv is faster).
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
from tests.harness.hostkvd_proc import HostkvdProcess, uts_prefix  # noqa: E402
from tests.harness.qemu_guest import QemuGuest, unix_forward  # noqa: E402

HOSTNAME = "bench-host"

GUEST_LOOPS = r"""
import json, socket, sys, time, http.client
n = int(sys.argv[1])
def pct(v, q):
    v = sorted(v); return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]
s = socket.socket(socket.AF_UNIX); s.connect('/run/hostkv/agent.sock'); f = s.makefile('rwb')
def live():
    f.write(b'{"op":"get","key":"host.hostname","live":true}\n'); f.flush()
    r = json.loads(f.readline()); assert r.get('ok') and r['value'] == '%(host)s', r
c = http.client.HTTPConnection('10.0.2.100', 80, timeout=20)
def web():
    c.request('GET', '/host.hostname'); r = c.getresponse(); b = r.read(); assert b == b'%(host)s', b
out = {}
for name, fn in (('hostkv', live), ('http', web)):
    for _ in range(20): fn()
    t = []
    for _ in range(n):
        t0 = time.monotonic(); fn(); t.append(time.monotonic() - t0)
    out[name] = t
print(json.dumps(out))
""" % {"host": HOSTNAME}

# The transport alone: the agent is stopped and this loop owns the port (protocol frames, no agent hop).
GUEST_RAW_PORT = r"""
import glob, json, os, select, sys, time
n = int(sys.argv[1])
dev = [os.path.join('/dev', os.path.basename(os.path.dirname(p))) for p in glob.glob('/sys/class/virtio-ports/*/name')
       if open(p).read().strip() == 'org.hostkv.0'][0]
fd = os.open(dev, os.O_RDWR)
buf = b''
def frame():
    global buf
    while b'\n' not in buf:
        buf += os.read(fd, 65536)
    line, buf = buf.split(b'\n', 1)
    return json.loads(line) if line.strip() else None
os.write(fd, b'\n{"op":"sync","token":"bench"}\n')
while True:
    f = frame()
    if f and f.get('op') == 'sync' and f.get('token') == 'bench':
        break
req = b'{"op":"get","id":1,"key":"host.hostname"}\n'
def get():
    os.write(fd, req)
    while True:
        f = frame()
        if f and f.get('op') == 'value':
            return
for _ in range(20): get()
t = []
for _ in range(n):
    t0 = time.monotonic(); get(); t.append(time.monotonic() - t0)
print(json.dumps({'raw': t}))
"""


class MetadataHandler(http.server.BaseHTTPRequestHandler):
    """The baseline at its best: keep-alive, and each response leaves in ONE write (headers and
    body separately trip Nagle/delayed-ACK in the user-mode TCP path: ~40 ms per request)."""
    protocol_version = "HTTP/1.1"
    wbufsize = 64 * 1024          # buffered; handle_one_request() flushes once per response

    def do_GET(self):
        body = HOSTNAME.encode() if self.path == "/host.hostname" else b""
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def summary(samples_s):
    ms = sorted(x * 1000 for x in samples_s)
    return {"n": len(ms), "median_ms": statistics.median(ms),
            "p95_ms": ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=300, help="requests per method")
    ap.add_argument("--cli", type=int, default=10, help="full `hostkv get` commands")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="hkv-rtt-")
    http_sock = os.path.join(work, "http.sock")
    server = socketserver.ThreadingUnixStreamServer(http_sock, MetadataHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    chan = os.path.join(work, "hostkv.sock")
    host = HostkvdProcess(os.path.join(work, "host"), channels=[chan], config_text="",
                          prefix=uts_prefix(HOSTNAME), extra_args=["--log-level", "info"])
    guest = QemuGuest(work, chan, image=build_guest_image(),
                      guestfwd=[("10.0.2.100", 80, unix_forward(http_sock))])
    try:
        host.start()
        guest.start()
        guest.wait_ready(120)
        deadline = time.monotonic() + 30
        while guest.exec(["hostkv", "get", "host.hostname"])[1] != HOSTNAME:
            if time.monotonic() > deadline:
                raise SystemExit("the guest never got the host name:\n" + guest.console_tail())
            time.sleep(0.1)
        rc, out, err = guest.exec(["python3", "-c", GUEST_LOOPS, str(args.n)], timeout=600)
        if rc != 0:
            raise SystemExit("guest loop failed: %s\n%s" % (err, guest.console_tail()))
        res = json.loads(out)
        guest.exec("kill $(cat /run/hostkv/agent.pid 2>/dev/null) 2>/dev/null; "
                   "for p in /proc/[0-9]*; do grep -q hostkv.agent $p/cmdline 2>/dev/null && "
                   "kill ${p#/proc/}; done; sleep 1")
        rc, out, err = guest.exec(["python3", "-c", GUEST_RAW_PORT, str(args.n)], timeout=600)
        if rc != 0:
            raise SystemExit("raw port loop failed: %s\n%s" % (err, guest.console_tail()))
        res.update(json.loads(out))
        cli = []
        for _ in range(args.cli):
            rc, out, err = guest.exec("t0=$(cat /proc/uptime); hostkv get host.hostname >/dev/null; "
                                      "cat /proc/uptime; echo $t0")
            t1, t0 = float(out.split()[0]), float(out.split()[2])
            cli.append(t1 - t0)
    finally:
        guest.stop(sync=False)
        host.stop()
        server.shutdown()
    hk, web, raw = summary(res["hostkv"]), summary(res["http"]), summary(res["raw"])
    print("accelerator: %s" % accel.describe())
    print("hostkv live get over virtio-serial: median %.3f ms  p95 %.3f ms  (n=%d)"
          % (hk["median_ms"], hk["p95_ms"], hk["n"]))
    print("HTTP GET over user-mode virtio-net: median %.3f ms  p95 %.3f ms  (n=%d)"
          % (web["median_ms"], web["p95_ms"], web["n"]))
    print("ratio HTTP/hostkv: median %.2fx  p95 %.2fx"
          % (web["median_ms"] / hk["median_ms"], web["p95_ms"] / hk["p95_ms"]))
    print("raw virtio-serial port, no agent hop: median %.3f ms  p95 %.3f ms  (n=%d)"
          % (raw["median_ms"], raw["p95_ms"], raw["n"]))
    print("ratio HTTP/raw port: median %.2fx  p95 %.2fx"
          % (web["median_ms"] / raw["median_ms"], web["p95_ms"] / raw["p95_ms"]))
    print("full `hostkv get` command (process start + file read): median %.0f ms (n=%d, 10 ms clock;"
          " under TCG `python3 -c pass` alone costs over a second)"
          % (statistics.median(cli) * 1000, len(cli)))


if __name__ == "__main__":
    main()
