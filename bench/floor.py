"""The transport's floor for the migration benchmarks: one line over a second virtio-serial port.

Contract (used by migration_latency.py and libvirt_migration.py):
  * ``FLOOR_PORT`` is the second port's name; the bench adds it to the SAME guest that runs the
    agent, so both ride the same migration.
  * ``FloorWriter(path, line)`` is the minimal host side: a thread connects to the chardev socket
    ``path`` as soon as it exists and writes ``line + "\\n"`` at once (what hostkvd does with its
    snapshot on connect), then holds the connection until ``close()``.
  * ``FLOOR_READER`` is the minimal guest side (``python3 FILE PORT_NAME [--console]``): it finds
    the port through sysfs, blocks in read() and writes ``<CLOCK_MONOTONIC> <line>`` to
    ``/tmp/floor.log`` for every line - no parsing, no files before the time stamp; with
    ``--console`` it writes ``hostkv-floor: <line>`` to /dev/console instead (the libvirt bench
    tails the console on the host).
  * ``PUBLISH_READER`` (``python3 FILE PORT_NAME``, ``start_floor_reader(..., publish=True)``) is
    the least a *Python* publication can do, for a second reference line: the line is a snapshot
    frame (``publish_line(tag, n)``: 8 keys, ``host.floor`` = tag), and before its time stamp the
    reader decodes it (json), checks every key and value with the two regular expressions of
    hostkv.common.entries' rule (a stand-in that only measures, not a second home of the rule),
    writes each value and a values.json into files opened ahead and renames a symlink over
    ``current`` - no objects, no framing, no watchers, no cache; the next dir is made after the
    time stamp.  ``/tmp/floor.log`` gets ``<CLOCK_MONOTONIC> <tag>`` as with the bare reader.
  * ``STATUS_STAGES`` names the agent's per-publication time stamps (``hostkv status --json``,
    ``timings``) in path order; ``stage_split(timings, resumed_guest)`` turns them into ms after
    the resume.
  * ``percentile(values, p)`` (linear interpolation) and ``summary(values)``, so both benches
    report medians and p95 the same way.
"""

import os
import socket
import statistics
import threading
import time

FLOOR_PORT = "org.hostkv.floor.0"

# both guest readers share this start: the port's /dev path from sysfs by its name (argv[1]),
# and lines(size), which reads it and yields (time right after read(), line)
_PORT_LINES = r"""
import os, sys, time
name = sys.argv[1]
path = None
while path is None:
    for e in sorted(os.listdir('/sys/class/virtio-ports')):
        try:
            if open('/sys/class/virtio-ports/%s/name' % e).read().strip() == name:
                path = '/dev/' + e
        except OSError:
            pass
    if path is None:
        time.sleep(0.1)

def lines(size):           # each non-empty line, with the CLOCK_MONOTONIC time right after its read()
    fd = os.open(path, os.O_RDONLY)
    buf = b''
    while True:
        data = os.read(fd, size)
        t = time.monotonic()
        if not data:                # the host side is not connected: read() returns 0 at once
            time.sleep(0.01)
            continue
        buf += data
        while b'\n' in buf:
            line, buf = buf.split(b'\n', 1)
            if line:
                yield t, line
"""

FLOOR_READER = _PORT_LINES + r"""
console = os.open('/dev/console', os.O_WRONLY) if '--console' in sys.argv else None
log = None if console is not None else open('/tmp/floor.log', 'a', buffering=1)
for t, line in lines(4096):
    if console is not None:
        os.write(console, b'\nhostkv-floor: ' + line + b'\n')
    else:
        log.write('%.6f %s\n' % (t, line.decode()))
"""

PUBLISH_READER = _PORT_LINES + r"""
import json, re
KEY = re.compile(r"\A(?:host|vm)\.[A-Za-z0-9._-]+\Z")
BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
run = '/run/hostkv-floor'
os.makedirs(run + '/snap', exist_ok=True)
ahead = {'n': 0}
def prepare(keys):
    ahead['n'] += 1
    d = '%s/snap/%d' % (run, ahead['n'])
    os.mkdir(d)
    ahead['fds'] = dict((k, os.open(d + '/' + k, os.O_WRONLY | os.O_CREAT, 0o644))
                        for k in list(keys) + ['values.json'])
    ahead['tmp'] = run + '/.tmp-%d' % ahead['n']
    os.symlink(d, ahead['tmp'])
prepare(['host.floor', 'host.fqdn'] + ['host.k%d' % i for i in range(6)])
log = open('/tmp/floor.log', 'a', buffering=1)
for _read_at, line in lines(65536):
    values = json.loads(line.decode('utf-8'))['values']
    for k, v in values.items():
        if not KEY.match(k) or BAD.search(v) or len(v.encode('utf-8')) > 4096:
            raise SystemExit('bad entry %r' % k)
    fds = ahead['fds']
    for k, v in values.items():
        os.write(fds[k], v.encode('utf-8'))
    os.write(fds['values.json'], json.dumps(values).encode('utf-8'))
    os.rename(ahead['tmp'], run + '/current')
    t = time.monotonic()
    log.write('%.6f %s\n' % (t, values['host.floor']))
    for x in fds.values():
        os.close(x)
    prepare(values)
"""


def publish_line(tag, n):
    """The snapshot frame PUBLISH_READER expects: 8 keys like bench/agent_native.py's, host.floor = tag."""
    import json
    host = "hv-%d" % (n % 2)
    values = {"host.floor": tag, "host.fqdn": host + ".dc1.example.org"}
    for k in range(6):
        values["host.k%d" % k] = "%s value %d" % (host, k)
    return json.dumps({"op": "snapshot", "v": 1, "host_id": "id-" + host, "generation": n,
                       "values": values}, sort_keys=True, separators=(",", ":"))


# (status key, label) in the order the agent passes them on the way from bytes to visible files
STATUS_STAGES = (("read_at", "bytes at agent"), ("parsed_at", "parsed"), ("swapped_at", "swapped"),
                 ("answered_at", "watchers answered"), ("cached_at", "cache"), ("hooks_at", "hooks"))


class FloorWriter(object):
    """Connects to ``path`` when it appears and writes one line; ``close()`` hangs up."""

    def __init__(self, path, line, timeout=60.0):
        self.path = path
        self.line = line
        self.sock = None
        self.connected_at = None
        self.error = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, args=(timeout,), daemon=True)
        self._thread.start()

    def _run(self, timeout):
        deadline = time.monotonic() + timeout
        while not self._closed:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.path)
            except OSError as err:
                s.close()
                if time.monotonic() > deadline:
                    self.error = err
                    return
                time.sleep(0.001)
                continue
            s.sendall((self.line + "\n").encode())
            self.sock, self.connected_at = s, time.monotonic()
            return

    def wait_connected(self, timeout=30.0):
        self._thread.join(timeout)
        if self.sock is None:
            raise RuntimeError("floor writer never connected to %s: %s" % (self.path, self.error))

    def close(self):
        self._closed = True
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def read_floor_log(text):
    """[(guest monotonic time, line)] from /tmp/floor.log's content."""
    out = []
    for row in text.splitlines():
        t, _, line = row.partition(" ")
        out.append((float(t), line))
    return out


def stage_split(timings, resumed_guest):
    """{label: ms after the resume} for the agent's ``timings`` (guest CLOCK_MONOTONIC)."""
    return dict((label, (timings[key] - resumed_guest) * 1000.0)
                for key, label in STATUS_STAGES if timings.get(key) is not None)


def percentile(values, p):
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values):
    return {"n": len(values), "min": min(values), "median": statistics.median(values),
            "p95": percentile(values, 95), "max": max(values)}


def start_floor_reader(write_file, run_sh, publish=False):
    """Start FLOOR_READER (PUBLISH_READER if ``publish``) in the guest: ``write_file(path, text)``,
    ``run_sh(shell_text)``."""
    write_file("/tmp/hostkv-floor.py", PUBLISH_READER if publish else FLOOR_READER)
    run_sh("setsid python3 /tmp/hostkv-floor.py %s </dev/null >/tmp/floor.err 2>&1 &" % FLOOR_PORT)
