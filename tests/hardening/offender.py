"""A hostile guest, run as its own process: it plays QEMU's chardev side of one guest port.

    python tests/hardening/offender.py MODE SOCKET_PATH SECONDS

It binds a unix socket server at SOCKET_PATH (hostkvd connects to it exactly as to QEMU), prints
``ready`` once hostkvd is connected and its first snapshot arrived, waits for one line on stdin
("go"), then attacks for SECONDS (re-accepting hostkvd whenever it comes back after a close) and
prints one JSON object of statistics on stdout.  Modes:

  * ``flood``: up to 1 GiB of junk with no newline, streamed from a generator (never allocated);
  * ``fast``: valid ``ping`` frames as fast as the socket takes them (replies are read and counted);
  * ``malformed``: 10,000 lines of malformed JSON in total, paced over the attack, across however
    many connections hostkvd grants (frames written while hostkvd is away are lost with the socket).

Statistics: ``sent_bytes``, ``sent_frames``, ``frames`` (op/code -> count of what hostkvd sent),
``connects``, ``closes`` (times hostkvd closed the connection), ``gaps`` (seconds from each close to
the next connect: the penalty), ``first_error`` (the first error frame received).
A separate process keeps the attacker's CPU use out of the measuring test's interpreter.
"""

import json
import os
import socket
import sys
import threading
import time

GIB = 1 << 30
FLOOD_CHUNK = 64 * 1024
MALFORMED_TOTAL = 10000
MALFORMED_LINE = b'{"op": "ping", id: 1,}\n'       # not JSON: unquoted name, trailing comma
PING_BATCH = b'{"op":"ping","id":1}\n' * 200
PONG = b'{"id":1,"op":"pong"}'


def junk(total=GIB, chunk=FLOOD_CHUNK):
    """Yield ``total`` bytes of newline-free junk in ``chunk``-sized pieces (one buffer reused)."""
    block = bytes(bytearray(range(11, 11 + 64)) * (chunk // 64))   # no 0x0a in it
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        yield block if n == chunk else block[:n]
        sent += n


class Reader(threading.Thread):
    """Reads what hostkvd sends on one connection; counts frames by op (and error code)."""

    def __init__(self, conn, stats, lock):
        threading.Thread.__init__(self, daemon=True)
        self.conn = conn
        self.stats = stats
        self.lock = lock
        self.closed_at = None

    def run(self):
        buf = b""
        while True:
            try:
                chunk = self.conn.recv(65536)
            except socket.timeout:          # the socket's timeout is for the sender's sake
                continue
            except OSError:
                chunk = b""
            if not chunk:
                self.closed_at = time.monotonic()
                return
            buf += chunk
            *lines, buf = buf.split(b"\n")
            with self.lock:
                for line in lines:
                    if line == PONG:                 # the common case, counted without parsing
                        self.stats["frames"]["pong"] = self.stats["frames"].get("pong", 0) + 1
                        continue
                    if not line.strip():
                        continue
                    frame = json.loads(line.decode("utf-8"))
                    name = frame["op"] if frame["op"] != "error" else "error:" + frame.get("code", "?")
                    self.stats["frames"][name] = self.stats["frames"].get(name, 0) + 1
                    if frame["op"] == "error" and self.stats["first_error"] is None:
                        self.stats["first_error"] = frame


def _send_some(conn, data, deadline, reader):
    """Send ``data`` until done, the deadline, or the peer closed; return bytes sent."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        if time.monotonic() >= deadline or reader.closed_at is not None:
            break
        try:
            done += conn.send(view[done:])
        except socket.timeout:
            continue
        except OSError:
            break
    return done


def attack(conn, mode, deadline, stats, reader, state):
    """Run the attack on one connection until the deadline or until hostkvd closes it."""
    conn.settimeout(0.1)
    while time.monotonic() < deadline and reader.closed_at is None:
        if mode == "flood":
            piece = next(state["junk"], None)
            if piece is None:
                return
            stats["sent_bytes"] += _send_some(conn, piece, deadline, reader)
        elif mode == "fast":
            n = _send_some(conn, PING_BATCH, deadline, reader)
            stats["sent_bytes"] += n
            stats["sent_frames"] += n // 21
        elif mode == "malformed":
            # paced over the whole attack (a burst would just sit in the socket buffer and be
            # dropped with the first close): every connection hostkvd grants gets frames
            left = MALFORMED_TOTAL - stats["sent_frames"]
            if left <= 0:
                time.sleep(0.05)
                continue
            due = int(MALFORMED_TOTAL * min(1.0, (time.monotonic() - state["t0"]) / state["seconds"]))
            batch = MALFORMED_LINE * min(left, max(0, due - stats["sent_frames"]) + 1)
            n = _send_some(conn, batch, deadline, reader)
            stats["sent_bytes"] += n
            stats["sent_frames"] += n // len(MALFORMED_LINE)
            time.sleep(0.01)
        else:
            raise SystemExit("unknown mode %r" % mode)


def main(argv):
    mode, path, seconds = argv[1], argv[2], float(argv[3])
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    stats = {"mode": mode, "sent_bytes": 0, "sent_frames": 0, "frames": {}, "connects": 0,
             "closes": 0, "gaps": [], "first_error": None}
    lock = threading.Lock()
    state = {"junk": junk()}

    listener.settimeout(30)
    conn, _ = listener.accept()
    stats["connects"] += 1
    reader = Reader(conn, stats, lock)
    reader.start()
    while True:                              # wait for the snapshot hostkvd pushes on connect
        with lock:
            if stats["frames"].get("snapshot"):
                break
        time.sleep(0.01)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()

    deadline = time.monotonic() + seconds
    state.update(t0=time.monotonic(), seconds=seconds * 0.9)
    while True:
        attack(conn, mode, deadline, stats, reader, state)
        if time.monotonic() >= deadline:
            break
        if mode == "flood" and reader.closed_at is None:
            break                            # the whole GiB went through
        reader.join(1)
        stats["closes"] += 1
        closed_at = reader.closed_at or time.monotonic()
        conn.close()
        listener.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            break
        stats["connects"] += 1
        stats["gaps"].append(round(time.monotonic() - closed_at, 3))
        reader = Reader(conn, stats, lock)
        reader.start()
    time.sleep(0.2)                          # let the last replies arrive
    with lock:
        stats["seconds"] = seconds
        out = json.dumps(stats)
    conn.close()
    listener.close()
    try:
        os.unlink(path)
    except OSError:
        pass
    sys.stdout.write(out + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
