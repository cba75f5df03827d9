#!/usr/bin/env python3
"""CPU time per snapshot from bytes to swapped files, natively (no VM), median over many.

The agent's own code on the path a snapshot takes - the protocol session decoding the bytes,
the store publishing the record into a temp run dir and swapping ``current`` - timed with the
thread's CPU clock for each of ``-n`` snapshots that alternate between two hosts (what a
migration looks like: new host_id, new host.* values, same vm.* values).  The cache write and
the cleanup that follow the swap are timed apart (off the readers' path).

    .venv/bin/python bench/agent_native.py [-n 2000] [--keys 8] [--tree DIR ...]

``--tree DIR`` (repeatable) measures another checkout's agent the same way in a subprocess
(e.g. a ``git worktree`` of an older commit), side by side with this one.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def snapshot_bytes(protocol, n, keys):
    frames = []
    for i in range(n):
        host = "hv-%d" % (i % 2)
        values = {"host.hostname": host, "host.fqdn": host + ".dc1.example.org"}
        for k in range(max(0, keys - 4)):
            values["host.k%d" % k] = "%s value %d" % (host, k)
        values["vm.role"] = "web"
        values["vm.owner"] = "team-%d" % (keys % 5)
        snap = protocol.Snapshot("id-" + host, 1000 + i, values)
        frames.append(protocol.encode(snap.to_frame(), protocol.MAX_SNAPSHOT_BYTES))
    return frames


def measure(tree, n, keys):
    """Runs in the process whose sys.path holds ``tree``'s code; returns per-stage CPU seconds."""
    from hostkv import protocol
    work = tempfile.mkdtemp(prefix="hkv-native-")
    run_dir, state_dir = os.path.join(work, "run"), os.path.join(work, "state")
    frames = snapshot_bytes(protocol, n, keys)
    session = protocol.GuestSession(token_factory=lambda: "tok")
    connect = getattr(session, "connect", None) or session.connected
    connect()
    session.data_to_send()
    session.receive(b'{"op":"sync","token":"tok"}\n')
    clock = time.thread_time if hasattr(time, "thread_time") else time.process_time
    try:
        from hostkv.agent.store import Store
    except ImportError:
        Store = None
    parse, swap, after = [], [], []
    if Store is not None:                        # this tree: the Store owns the path
        store = Store(run_dir, state_dir, time.time, time.monotonic)
        store.restore()
        for data in frames:
            t0 = clock()
            snap = session.receive(data)[0].snapshot
            t1 = clock()
            change = store.apply(snap, True)
            t2 = clock()
            store.persist(change)
            t3 = clock()
            parse.append(t1 - t0)
            swap.append(t2 - t1)
            after.append(t3 - t2)
        store.close()
    else:                                        # an older tree: what its Agent._on_snapshot did
        from hostkv.agent import cache
        from hostkv.agent.model import History, Record
        from hostkv.agent.publish import Publisher
        pub = Publisher(run_dir)
        pub.prepare()
        history = History(0, {})
        for seq, data in enumerate(frames, 1):
            t0 = clock()
            snap = session.receive(data)[0].snapshot
            t1 = clock()
            record = Record(seq, snap.host_id, snap.generation, dict(snap.values), time.time(), False, True)
            history.add(seq, record.values)
            pub.publish(record, cleanup=False)
            t2 = clock()
            cache.save(state_dir, record)
            pub.cleanup()
            t3 = clock()
            parse.append(t1 - t0)
            swap.append(t2 - t1)
            after.append(t3 - t2)
    return {"parse": parse, "swap": swap, "after": after}


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100.0 * (len(s) - 1))))]


def report(label, res):
    total = [a + b for a, b in zip(res["parse"], res["swap"])]
    us = lambda v: v * 1e6  # noqa: E731
    print("%-28s bytes -> swapped: median %6.0f us  p95 %6.0f us   (parse %4.0f, publish+swap %4.0f; "
          "cache+cleanup after it %5.0f us)" % (
              label, us(statistics.median(total)), us(pct(total, 95)), us(statistics.median(res["parse"])),
              us(statistics.median(res["swap"])), us(statistics.median(res["after"]))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--keys", type=int, default=8)
    ap.add_argument("--tree", action="append", default=[], help="another checkout to measure too")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path[:0] = [os.path.join(args.child, "protocol"), os.path.join(args.child, "guest_agent")]
        print(json.dumps(measure(args.child, args.n, args.keys)))
        return 0
    print("%d snapshots of %d keys alternating between two hosts; CPU time of this thread "
          "(python %s)" % (args.n, args.keys, sys.version.split()[0]))
    for tree in args.tree + [REPO]:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", os.path.abspath(tree),
                              "-n", str(args.n), "--keys", str(args.keys)],
                             stdout=subprocess.PIPE, check=True, env=dict(os.environ, PYTHONPATH="")).stdout
        report("this checkout" if tree == REPO else tree, json.loads(out.decode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
