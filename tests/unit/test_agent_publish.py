"""Publication of /run/hostkv: complete snapshots only, even under kill -9 and concurrent readers."""

import inspect
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time

import pytest

from hostkv.agent import envfile
from hostkv.agent.model import Record
from hostkv.agent.publish import NoData, Publisher, current_dir, read_current


def make_record(seq, nkeys=20, stale=False, connected=True):
    """Every value names the seq, so a mixed snapshot is detectable."""
    values = {"host.k%03d" % i: "seq=%d key=%d %s" % (seq, i, "x" * (seq % 7) * 50) for i in range(nkeys)}
    values["host.hostname"] = "hv-%d" % seq
    if seq % 3 == 0:              # keys come and go
        values["vm.sometimes"] = "there at %d" % seq
    return Record(seq, "host-%d" % (seq % 4), seq * 10, values, 1700000000.0 + seq, stale, connected)


def check_tree(run_dir):
    """Assert run_dir holds exactly one complete, self-consistent snapshot; return its seq."""
    snap = current_dir(run_dir)
    with open(os.path.join(snap, "values.json"), "rb") as f:
        doc = json.loads(f.read().decode("utf-8"))
    seq = doc["seq"]
    expected = make_record(seq)
    assert doc["values"] == expected.values
    assert doc["host_id"] == expected.host_id and doc["generation"] == expected.generation
    keys_dir = os.path.join(snap, "keys")
    assert sorted(os.listdir(keys_dir)) == sorted(expected.values)
    for key, value in expected.values.items():
        with open(os.path.join(keys_dir, key), "rb") as f:
            assert f.read() == value.encode("utf-8")
    with open(os.path.join(snap, "env"), "rb") as f:
        assert f.read() == envfile.render_env(expected.values, seq).encode("utf-8")
    # the stable links lead into the same tree
    for link, target in (("values.json", "current/values.json"), ("keys", "current/keys"),
                         ("env", "current/env")):
        assert os.readlink(os.path.join(run_dir, link)) == target
    return seq


def test_layout_and_exact_bytes(tmp_path):
    run = str(tmp_path / "run")
    pub = Publisher(run)
    pub.prepare()
    with pytest.raises(NoData):
        read_current(run)
    rec = Record(1, "hv1", 3, {"host.hostname": "hv1", "vm.note": "a\nb 'c' $(x) ü"}, 1.5, False, True)
    name = pub.publish(rec)
    assert name == "1"
    assert os.readlink(os.path.join(run, "current")) == "snapshots/1"
    with open(os.path.join(run, "keys", "vm.note"), "rb") as f:
        assert f.read() == "a\nb 'c' $(x) ü".encode("utf-8")
    doc = read_current(run)
    assert doc == {"seq": 1, "host_id": "hv1", "generation": 3, "stale": False, "connected": True,
                   "received_at": 1.5, "values": rec.values}
    with open(os.path.join(run, "values.json")) as f:
        assert json.load(f) == doc
    # same seq republished (status change): a fresh dir, old one kept as "previous"
    name2 = pub.publish(rec.copy(connected=False, stale=True))
    assert name2 == "1.1"
    assert read_current(run)["connected"] is False
    # a strict umask (the agent's own, sampled when the Publisher is made: the agent never
    # changes it) must not hide the values from users
    old_umask = os.umask(0o077)
    try:
        strict = Publisher(run)
        strict.prepare()
        strict.publish(make_record(2))
    finally:
        os.umask(old_umask)
    for rel in ("current/", "current/keys", "current/keys/host.hostname", "current/values.json",
                "current/env"):
        assert os.stat(os.path.join(run, rel)).st_mode & 0o777 in (0o755, 0o644), rel
    strict.publish(make_record(3))
    # current, previous, and the dir made ahead for the next seq (never current while empty):
    # empty files for the current keys, env and values.json, and the link that will swap it in
    assert sorted(os.listdir(os.path.join(run, "snapshots"))) == ["2", "3", "4"]
    spare = os.path.join(run, "snapshots", "4")
    assert sorted(os.listdir(spare)) == ["env", "keys", "values.json"]
    assert sorted(os.listdir(os.path.join(spare, "keys"))) == sorted(make_record(3).values)
    for dirpath, dirnames, filenames in os.walk(spare):
        assert stat.S_IMODE(os.stat(dirpath).st_mode) == 0o755
        for name in filenames:
            st = os.stat(os.path.join(dirpath, name))
            assert st.st_size == 0 and stat.S_IMODE(st.st_mode) == 0o644
    assert os.readlink(os.path.join(run, ".tmp-current.%d.next" % os.getpid())) == "snapshots/4"
    assert os.readlink(os.path.join(run, "current")) == "snapshots/3"
    strict.publish(make_record(3).copy(stale=True))       # same seq again: the spare stays unused
    assert sorted(os.listdir(os.path.join(run, "snapshots"))) == ["3", "3.1", "4"]
    rec4 = make_record(4)                                  # written into the spare: one key less,
    assert "vm.sometimes" in make_record(3).values and "vm.sometimes" not in rec4.values
    strict.publish(rec4)
    assert os.readlink(os.path.join(run, "current")) == "snapshots/4"
    assert sorted(os.listdir(os.path.join(run, "snapshots"))) == ["3.1", "4", "5"]
    assert check_tree(run) == 4
    strict.publish(make_record(5).copy(values=dict(make_record(5).values, **{"vm.new": "n"})))
    assert sorted(os.listdir(current_dir(run) + "/keys"))[-1] == "vm.new"     # a key the spare lacked


def test_values_json_is_the_json_encoders_text():
    """values.json is rendered without the encoder's machinery (publish.values_json_text); it
    must be byte for byte what json.dumps(..., ensure_ascii=False, sort_keys=True) gives, but
    for received_at, written with exactly six decimals."""
    import re
    from hostkv.agent.publish import values_json_text
    nasty = ["", "a\nb", "'\"\\", "\u00fc\u4e2d\U0001f600", "\x00\x1f\x7f", "\u2028\u2029", " ", "$(x)"]
    for i, value in enumerate(nasty):
        for received_at in (1.5, 1700000000.123456, 0.1 + 0.2, 1795639699.0234567, 3):
            rec = Record(i, "h\u00f6st-%d\t" % i, 2 ** 53 + i, dict(("vm.k%d" % j, v) for j, v in enumerate(nasty[i:])),
                         received_at, bool(i % 2), bool(i % 3))
            text = values_json_text(rec)
            want = json.dumps(rec.to_json(), ensure_ascii=False, sort_keys=True)
            stamp = re.compile(r'"received_at": [0-9.e+]+,')
            assert stamp.sub("", text) == stamp.sub("", want)
            got = re.search(r'"received_at": (\d+\.\d{6}),', text).group(1)
            assert abs(float(got) - received_at) <= 1e-6
            assert json.loads(text)["values"] == rec.values


def test_leftovers_of_a_killed_publication_are_cleaned(tmp_path):
    run = str(tmp_path / "run")
    pub = Publisher(run)
    pub.prepare()
    pub.publish(make_record(5))
    keys6 = os.path.join(run, "snapshots", "6", "keys")
    os.makedirs(keys6, exist_ok=True)                                # half-written next snapshot
    with open(os.path.join(keys6, "host.hostname"), "w") as f:       # (in the spare made ahead)
        f.write("hv")
    os.symlink("snapshots/6", os.path.join(run, ".tmp-current.999"))
    Publisher(run).prepare()
    assert os.listdir(os.path.join(run, "snapshots")) == ["5"]
    assert not os.path.lexists(os.path.join(run, ".tmp-current.999"))
    assert check_tree(run) == 5


PUBLISHER_LOOP = r"""
import sys
sys.path[:0] = sys.argv[3].split(":")
from hostkv.agent.model import Record
from hostkv.agent.publish import Publisher
""" + inspect.getsource(make_record) + r"""
pub = Publisher(sys.argv[1])
pub.prepare()
seq = int(sys.argv[2])
warmup = int(sys.argv[4]) if len(sys.argv) > 4 else 0
while True:
    seq += 1
    pub.publish(make_record(seq))
    warmup -= 1
    if warmup == 0:
        sys.stdout.write("ready\n"); sys.stdout.flush()
"""


def _half_written(path, current_seq):
    """A dir ahead of ``current`` that is not the untouched spare made after publishing
    ``current_seq`` (empty files for its keys, env and values.json): a publication or the
    making of the spare was killed in the middle."""
    try:
        if sorted(os.listdir(path)) != ["env", "keys", "values.json"]:
            return True
        if sorted(os.listdir(os.path.join(path, "keys"))) != sorted(make_record(current_seq).values):
            return True
        for dirpath, dirnames, filenames in os.walk(path):
            if any(os.path.getsize(os.path.join(dirpath, name)) for name in filenames):
                return True
        return False
    except OSError:
        return True


def test_kill_9_at_random_points_never_leaves_a_partial_snapshot(tmp_path):
    """40 publisher processes, each killed at a random moment after its 3rd publication."""
    run = str(tmp_path / "run")
    pub = Publisher(run)
    pub.prepare()
    pub.publish(make_record(1))
    paths = os.environ["PYTHONPATH"]
    rng = random.Random(1234)
    seqs = []
    mid_publication = 0
    for i in range(40):
        start_seq = check_tree(run)
        proc = subprocess.Popen([sys.executable, "-c", PUBLISHER_LOOP, run, str(start_seq), paths, "3"],
                                stdout=subprocess.PIPE)
        try:
            assert proc.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0.0, 0.01))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        seq = check_tree(run)
        assert seq >= start_seq + 3
        seqs.append(seq)
        names = os.listdir(os.path.join(run, "snapshots"))
        # leftovers never pile up: at most current, previous and one half-written dir
        assert len(names) <= 3
        # (a dir ahead of current, half written; the untouched spare does not count)
        mid_publication += any(int(n.split(".")[0]) > seq and _half_written(os.path.join(run, "snapshots", n), seq)
                               for n in names)
        Publisher(run).prepare()           # what the next agent start does: leftovers go
        assert all(int(n.split(".")[0]) <= seq for n in os.listdir(os.path.join(run, "snapshots")))
    assert seqs == sorted(seqs)
    # the kills really hit publications in progress (a half-written dir was left behind)
    print("kills mid-publication: %d/40" % mid_publication)
    assert mid_publication >= 5, mid_publication


def test_concurrent_reader_never_sees_a_mixed_snapshot(tmp_path):
    """A publisher process swaps snapshots as fast as it can while this process reads."""
    run = str(tmp_path / "run")
    pub = Publisher(run)
    pub.prepare()
    pub.publish(make_record(1))
    proc = subprocess.Popen([sys.executable, "-c", PUBLISHER_LOOP, run, "1", os.environ["PYTHONPATH"], "1"],
                            stdout=subprocess.PIPE)
    reads = 0
    seen = set()
    try:
        assert proc.stdout.readline() == b"ready\n"
        deadline = time.time() + 20           # normally ~0.2 s; generous for a loaded machine
        while len(seen) < 30 and time.time() < deadline:
            doc = read_current(run)                       # one resolved snapshot dir
            assert doc["values"] == make_record(doc["seq"]).values
            with open(os.path.join(run, "values.json"), "rb") as f:   # via the stable link
                doc2 = json.loads(f.read().decode("utf-8"))
            assert doc2["values"] == make_record(doc2["seq"]).values
            seen.add(doc["seq"])
            reads += 1
    finally:
        proc.kill()
        proc.wait(10)
    assert len(seen) >= 30, (reads, len(seen))
