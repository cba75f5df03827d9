"""The agent's publication under kill -9 (issue 6, item 5), with hostile values.

The agent's own unit tests (tests/unit/test_agent_publish.py) kill a publisher 40 times with plain
values.  Here the real :class:`hostkv.agent.publish.Publisher` runs in forked children that are
SIGKILLed at random points 220 times while they publish snapshots full of newlines, quotes,
$(...), backticks and non-ASCII text; after every kill /run/hostkv (a temp dir) must hold exactly
one complete snapshot whose values.json, keys/ and env agree byte for byte, and sourcing the env
file in the system's sh must give the exact values back without running anything.
(The same values end to end through hostkvd and a real guest: test_hardening_vm.py.)
"""

import json
import os
import random
import signal
import subprocess
import time

from hostkv.agent import envfile
from hostkv.agent.model import Record
from hostkv.agent.publish import Publisher, current_dir

KILLS = 220
NASTY = ["a\nb", "'", '"', "$(touch {canary})", "`touch {canary}`", "${{HOME}}", "\\", "\u00fc\u4e2d\U0001f600",
         "\t", ";|&<>*?[a]!", "'$(touch {canary})'", "\n", " lead and trail ", "%s %d"]


def nasty_record(seq, canary):
    """Every value names ``seq``, so a mixed snapshot is detectable; keys come and go with seq."""
    values = {}
    for i, piece in enumerate(NASTY):
        values["host.n%02d" % i] = "seq=%d %s" % (seq, piece.format(canary=canary))
    values["host.hostname"] = "hv-%d" % seq
    if seq % 3 == 0:
        values["vm.sometimes"] = "there at %d\n" % seq
    return Record(seq, "host-%d" % (seq % 4), seq * 10, values, 1700000000.0 + seq, False, True)


def check_tree(run, canary, with_shell):
    """One complete, self-consistent snapshot in ``run``; returns its seq."""
    snap = current_dir(run)
    with open(os.path.join(snap, "values.json"), "rb") as f:
        doc = json.loads(f.read().decode("utf-8"))
    want = nasty_record(doc["seq"], canary)
    assert doc["values"] == want.values and doc["host_id"] == want.host_id
    keys = os.path.join(snap, "keys")
    assert sorted(os.listdir(keys)) == sorted(want.values)
    for key, value in want.values.items():
        with open(os.path.join(keys, key), "rb") as f:
            assert f.read() == value.encode("utf-8"), key
    with open(os.path.join(snap, "env"), "rb") as f:
        assert f.read() == envfile.render_env(want.values, doc["seq"]).encode("utf-8")
    if with_shell:
        script = ". %s/env && " % run + " && ".join(
            "printf '%%s\\0' \"$%s\"" % envfile.env_name(k) for k in sorted(want.values))
        out = subprocess.run(["sh", "-c", script], capture_output=True, timeout=10).stdout
        assert out.split(b"\0")[:-1] == [want.values[k].encode("utf-8") for k in sorted(want.values)]
        assert not os.path.exists(canary), "sourcing the env file executed a command"
    return doc["seq"]


def half_written(path, current_seq, canary):
    """A dir ahead of ``current`` that is not the untouched spare the publisher makes after
    publishing ``current_seq`` (empty files for its keys, env and values.json)."""
    try:
        if sorted(os.listdir(path)) != ["env", "keys", "values.json"]:
            return True
        if sorted(os.listdir(os.path.join(path, "keys"))) != sorted(nasty_record(current_seq, canary).values):
            return True
        return any(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    except OSError:
        return True


def test_kill9_at_random_points_never_leaves_a_partial_or_mixed_snapshot(tmp_path):
    run = str(tmp_path / "run")
    canary = str(tmp_path / "pwned")
    pub = Publisher(run)
    pub.prepare()
    pub.publish(nasty_record(1, canary))
    rng = random.Random(2026)
    seqs, mid_publication = [], 0
    t0 = time.monotonic()
    for i in range(KILLS):
        start = check_tree(run, canary, with_shell=(i % 20 == 0))
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                                   # the child: an agent publishing non-stop
            try:
                os.close(r)
                child = Publisher(run)
                child.prepare()                        # what every agent start does
                seq = start
                while True:
                    seq += 1
                    child.publish(nasty_record(seq, canary))
                    if w is not None:
                        os.write(w, b"x")
                        os.close(w)
                        w = None
            finally:
                os._exit(0)
        os.close(w)
        try:
            assert os.read(r, 1) == b"x"
            time.sleep(rng.uniform(0.0, 0.004))
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
        seq = check_tree(run, canary, with_shell=(i % 20 == 0))
        assert seq > start
        seqs.append(seq)
        names = os.listdir(os.path.join(run, "snapshots"))
        mid_publication += any(int(n.split(".")[0]) > seq and half_written(os.path.join(run, "snapshots", n),
                                                                           seq, canary)
                               for n in names) or any(
            n.startswith(".tmp-") and not n.endswith(".next") for n in os.listdir(run))
        assert len(names) <= 3, names                  # leftovers never pile up
    assert seqs == sorted(seqs)
    print("\nagent: %d kill -9 at random points (%d mid-publication) in %.1f s: 0 partial or mixed "
          "snapshots" % (KILLS, mid_publication, time.monotonic() - t0))
    assert mid_publication >= KILLS // 10, mid_publication   # the kills really hit publications
