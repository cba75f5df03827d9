"""TEST-ONLY command server inside the hostkv test guest, on virtio-serial port org.hostkv.test.0.

Never shipped: it exists so tests can run commands in the guest without a network or qemu-ga.
Python 3.6+ standard library only.

Wire format (newline-delimited JSON, one object per line, UTF-8):
  request  {"id": ANY, "cmd": [argv...]}            run argv directly
           {"id": ANY, "sh": "shell text"}           run /bin/sh -c TEXT
           optional: "timeout": seconds (default 60), "stdin": text, "env": {extra vars},
                     "cwd": dir
           {"id": ANY, "op": "ping"}                  answer {"id", "pong": true, "uptime": s,
                                                      "init_done": bool (guest init finished)}
  reply    {"id", "rc", "stdout", "stderr", "timed_out"}   (stdout/stderr decoded as UTF-8
           with replacement; each capped at 4 MiB, "truncated": true if cut)
           {"id", "error": "text"}                    malformed request
Empty lines are ignored: the host sends one on every (re)connect to resynchronise framing.
Each request runs in its own thread, so replies may come out of order: match them by id.
On timeout the command's whole process group is killed and "timed_out" is true (rc = -9).

Port handling is the same as the agent's must be: find the port through sysfs (no udev), and
when the host side is not connected (POLLHUP, read() == 0: level-triggered) drop any partial
line and poll for POLLOUT every 50 ms until the host is back (e.g. after live migration).
A reply that cannot be written within 30 s (host gone) is dropped.
"""

import errno
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time

PORT_NAME = "org.hostkv.test.0"
SYSFS = "/sys/class/virtio-ports"
INIT_DONE = "/run/hostkv-test/init-done"
MAX_OUTPUT = 4 * 1024 * 1024
MAX_LINE = 16 * 1024 * 1024
RECONNECT_POLL = 0.05
WRITE_TIMEOUT = 30.0


def log(msg):
    sys.stderr.write("hostkv-test exec_server: %s\n" % msg)
    sys.stderr.flush()


def find_port(name):
    """/dev/vportNpM of the port called ``name``, or None while it is absent."""
    try:
        entries = sorted(os.listdir(SYSFS))
    except OSError:
        return None
    for entry in entries:
        try:
            with open(os.path.join(SYSFS, entry, "name")) as f:
                if f.read().strip() == name:
                    dev = os.path.join("/dev", entry)
                    if os.path.exists(dev):
                        return dev
        except OSError:
            continue
    return None


class Port(object):
    """The open port: reads lines, serialises writes, knows whether the host is connected."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        self.wlock = threading.Lock()

    def wait_host(self):
        """Block until the host side is connected (POLLOUT without POLLHUP)."""
        p = select.poll()
        p.register(self.fd, select.POLLOUT)
        while True:
            ev = 0
            for _fd, e in p.poll(0):
                ev |= e
            if ev & select.POLLOUT and not ev & select.POLLHUP:
                return
            time.sleep(RECONNECT_POLL)

    def write_line(self, obj):
        data = (json.dumps(obj) + "\n").encode("utf-8")
        deadline = time.time() + WRITE_TIMEOUT
        with self.wlock:
            p = select.poll()
            p.register(self.fd, select.POLLOUT)
            while data:
                if time.time() > deadline:
                    log("dropping reply %r: host not reading" % (obj.get("id"),))
                    return
                try:
                    n = os.write(self.fd, data)
                    data = data[n:]
                except OSError as err:
                    if err.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                        # host disconnected: wait for it rather than lose the reply
                        time.sleep(RECONNECT_POLL)
                        continue
                    p.poll(200)


def run_request(port, req):
    rid = req.get("id")
    try:
        if req.get("op") == "ping":
            with open("/proc/uptime") as f:
                uptime = float(f.read().split()[0])
            port.write_line({"id": rid, "pong": True, "uptime": uptime,
                             "init_done": os.path.exists(INIT_DONE)})
            return
        if "cmd" in req:
            argv = req["cmd"]
            if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
                raise ValueError("'cmd' must be a non-empty list of strings")
        elif "sh" in req:
            if not isinstance(req["sh"], str):
                raise ValueError("'sh' must be a string")
            argv = ["/bin/sh", "-c", req["sh"]]
        else:
            raise ValueError("request needs 'cmd', 'sh' or 'op'")
        timeout = float(req.get("timeout", 60))
        stdin = req.get("stdin")
        env = dict(os.environ)
        env.update(req.get("env") or {})
    except (ValueError, TypeError) as err:
        port.write_line({"id": rid, "error": str(err)})
        return
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=req.get("cwd") or "/",
            start_new_session=True)
    except OSError as err:
        port.write_line({"id": rid, "rc": 127, "stdout": "", "stderr": "exec failed: %s\n" % err,
                         "timed_out": False})
        return
    timed_out = False
    try:
        out, err = proc.communicate(stdin.encode("utf-8") if stdin is not None else None,
                                    timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        out, err = proc.communicate()
    reply = {"id": rid, "rc": proc.returncode, "timed_out": timed_out}
    for key, data in (("stdout", out), ("stderr", err)):
        if len(data) > MAX_OUTPUT:
            data = data[:MAX_OUTPUT]
            reply["truncated"] = True
        reply[key] = data.decode("utf-8", "replace")
    port.write_line(reply)


def handle_line(port, line):
    line = line.strip()
    if not line:
        return
    try:
        req = json.loads(line.decode("utf-8"))
        if not isinstance(req, dict):
            raise ValueError("request must be a JSON object")
    except ValueError as err:
        port.write_line({"id": None, "error": "bad request: %s" % err})
        return
    t = threading.Thread(target=run_request, args=(port, req))
    t.daemon = True
    t.start()


def serve(port):
    """Read requests forever, riding out host disconnects."""
    p = select.poll()
    p.register(port.fd, select.POLLIN)
    buf = b""
    while True:
        events = 0
        for _fd, ev in p.poll(1000):
            events |= ev
        if not events:
            continue
        data = b""
        if events & select.POLLIN:
            try:
                data = os.read(port.fd, 65536)
            except OSError as err:
                if err.errno in (errno.EAGAIN, errno.EINTR):
                    continue
                data = b""
        if data:
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                handle_line(port, line)
            if len(buf) > MAX_LINE:
                log("request line over %d bytes: dropped" % MAX_LINE)
                buf = b""
            continue
        # read() == 0 or POLLHUP: the host side is not connected.  (Not logged: the harness
        # may connect once per command, and the console tail is for the agent's messages.)
        buf = b""
        port.wait_host()


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    path = None
    while path is None:
        path = find_port(PORT_NAME)
        if path is None:
            time.sleep(0.1)
    log("serving %s on %s" % (PORT_NAME, path))
    serve(Port(path))


if __name__ == "__main__":
    main()
