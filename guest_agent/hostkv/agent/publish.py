"""Atomic publication of the run dir (/run/hostkv) and reading it back.

Layout (``run_dir``)::

    snapshots/<name>/values.json   the whole record (see model.Record.to_json)
    snapshots/<name>/keys/<key>    each value's exact UTF-8 bytes, no newline added
    snapshots/<name>/env           shell-sourceable (see envfile.py)
    current -> snapshots/<name>    swapped atomically (rename of a temporary symlink)
    values.json -> current/values.json, keys -> current/keys, env -> current/env

A snapshot directory is written completely under a fresh name before ``current`` is
switched to it, so a reader, or the agent being killed (even ``kill -9``) at any point,
can never see a partial or mixed snapshot.  After a switch every entry of
``snapshots/`` except the new and the previous one is removed (the previous one stays
for readers that resolved ``current`` just before the switch); leftovers of a killed
publication are removed the same way.

Readers that need several files of one snapshot resolve ``current`` once and read
everything inside that directory (:func:`read_current` does that for values.json).
"""

import errno
import json
import os
import re
import stat
import time

from hostkv import protocol
from hostkv.agent import envfile

SNAPSHOTS = "snapshots"
CURRENT = "current"
STABLE_LINKS = (("values.json", "current/values.json"), ("keys", "current/keys"), ("env", "current/env"))
_NAME_RE = re.compile(r"\A\d+(?:\.\d+)?\Z")
_TMP_PREFIX = ".tmp-"
_UNKNOWN = object()


class NoData(Exception):
    """Nothing has been published in the run dir (or it is unreadable)."""


def rmtree(path):
    """Remove a directory tree (shutil is not in python3-minimal); missing is fine."""
    try:
        st = os.lstat(path)
    except OSError as err:
        if err.errno == errno.ENOENT:
            return
        raise
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            _unlink_quiet(os.path.join(root, name))
        for name in dirs:
            full = os.path.join(root, name)
            if os.path.islink(full):
                _unlink_quiet(full)
            else:
                try:
                    os.rmdir(full)
                except OSError as err:
                    if err.errno != errno.ENOENT:
                        raise
    try:
        os.rmdir(path)
    except OSError as err:
        if err.errno != errno.ENOENT:
            raise


def _unlink_quiet(path):
    try:
        os.unlink(path)
    except OSError as err:
        if err.errno != errno.ENOENT:
            raise


def _write_new(path, data, mode=0o644, chmod=True):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        if chmod:
            os.fchmod(fd, mode)      # world-readable whatever the umask: any user may read values
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)


def _symlink_atomic(target, path):
    """Make ``path`` a symlink to ``target`` by renaming a temporary symlink over it."""
    tmp = os.path.join(os.path.dirname(path), "%s%s.%d" % (_TMP_PREFIX, os.path.basename(path), os.getpid()))
    try:
        os.symlink(target, tmp)
    except OSError as err:
        if err.errno != errno.EEXIST:
            raise
        _unlink_quiet(tmp)           # left by a killed agent with our pid
        os.symlink(target, tmp)
    try:
        os.rename(tmp, path)
    except OSError as err:
        _unlink_quiet(tmp)
        if err.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST) and os.path.isdir(path) \
                and not os.path.islink(path):
            # a real directory where a link belongs (e.g. left by an older tool): replace it
            rmtree(path)
            _symlink_atomic(target, path)
            return
        raise


class Publisher(object):
    """Writes :class:`~hostkv.agent.model.Record` objects into ``run_dir`` atomically.

    One Publisher owns a run dir: after :meth:`prepare` it remembers where ``current``
    points instead of reading the link back at every publication.
    """

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.snap_dir = os.path.join(run_dir, SNAPSHOTS)
        self._keep = None            # what the pending cleanup() keeps (None: nothing pending)
        self._next_seq = None
        self._current = _UNKNOWN     # the name ``current`` points to, as this publisher left it
        self._spare = None           # (seq, name, path): an empty snapshot dir (with keys/) made
                                     # ahead by cleanup() for the next seq, off the readers' path
        umask = os.umask(0o022)
        os.umask(umask)
        # made by us: readable by all (an admin may narrow it); no chmod needed if the umask
        # takes nothing away from 0755 / 0644 (it cannot change later: nothing in the agent sets it)
        self._chmod = bool(umask & 0o755)

    def prepare(self):
        """Create the run dir and remove leftovers of killed publications."""
        for path in (self.run_dir, self.snap_dir):
            try:
                os.makedirs(path, 0o755)
                os.chmod(path, 0o755)     # made by us: readable by all (an admin may narrow it)
            except OSError as err:
                if err.errno != errno.EEXIST:
                    raise
        current = self.current_name()
        self._current = current
        self._cleanup(keep=set([current]) if current else set())

    def current_name(self):
        """Name of the snapshot dir ``current`` points to, or None."""
        try:
            target = os.readlink(os.path.join(self.run_dir, CURRENT))
        except OSError:
            return None
        return os.path.basename(target.rstrip("/"))

    def publish(self, record, cleanup=True):
        """Publish ``record``; returns the snapshot dir name.  Raises OSError on I/O failure.

        ``cleanup=False``: leave the removal of older snapshot dirs to :meth:`cleanup` (so a
        caller can answer its readers first); the next publish cleans up in any case.
        """
        values = protocol.validate_values(record.values)   # keys become file names: re-check
        # the run dir is this agent's alone: after prepare() ``current`` is known without a
        # readlink (one system call less on the path to the readers)
        previous = self.current_name() if self._current is _UNKNOWN else self._current
        spare, self._spare = self._spare, None
        if spare is not None and spare[0] == record.seq and os.path.isdir(os.path.join(spare[2], "keys")):
            name, path = spare[1], spare[2]
        else:                        # an unused spare goes in the next cleanup()
            name, path = self._fresh_dir(record.seq)
        try:
            chmod = self._chmod
            keys_dir = os.path.join(path, "keys")
            if spare is None or name != spare[1]:
                os.mkdir(keys_dir, 0o755)
                if chmod:
                    os.chmod(keys_dir, 0o755)
            for key in sorted(values):
                _write_new(os.path.join(keys_dir, key), values[key].encode("utf-8"), chmod=chmod)
            _write_new(os.path.join(path, "env"), envfile.render_env(values, record.seq).encode("utf-8"),
                       chmod=chmod)
            # no indent: the C encoder (the pure-Python one costs ~20 ms under TCG after a migration)
            doc = json.dumps(record.to_json(), ensure_ascii=False, sort_keys=True)
            _write_new(os.path.join(path, "values.json"), (doc + "\n").encode("utf-8"), chmod=chmod)
        except BaseException:
            rmtree(path)
            raise
        if previous is None:
            # the stable links before the very first switch (dangling until then), so that
            # once ``current`` exists every documented path resolves; later they are only
            # checked (and repaired if someone removed one) by cleanup(), after the switch
            self._ensure_links()
        self._current = _UNKNOWN
        _symlink_atomic(os.path.join(SNAPSHOTS, name), os.path.join(self.run_dir, CURRENT))
        self._current = name
        keep = set([name])
        if previous:
            keep.add(previous)
        self._keep = keep
        self._next_seq = record.seq + 1
        if cleanup:
            self.cleanup()
        return name

    def cleanup(self):
        """The deferred part of :meth:`publish`: check the stable links, remove every
        snapshot dir but the current and previous one, and temporary links; then make the
        empty dir the next seq will be written into (never ``current`` before it is full)."""
        if self._keep is None:
            return
        self._ensure_links()
        self._cleanup(self._keep)
        self._keep = None
        try:
            name, path = self._fresh_dir(self._next_seq)
            try:
                os.mkdir(os.path.join(path, "keys"), 0o755)
                if self._chmod:
                    os.chmod(os.path.join(path, "keys"), 0o755)
            except BaseException:
                rmtree(path)
                raise
        except OSError:
            return                   # only an optimisation: publish() makes its own dir
        self._spare = (self._next_seq, name, path)

    def _ensure_links(self):
        for link, target in STABLE_LINKS:
            full = os.path.join(self.run_dir, link)
            try:
                if os.readlink(full) == target:
                    continue
            except OSError:
                pass
            _symlink_atomic(target, full)

    def _fresh_dir(self, seq):
        for k in range(0, 100000):
            name = "%d" % seq if k == 0 else "%d.%d" % (seq, k)
            path = os.path.join(self.snap_dir, name)
            try:
                os.mkdir(path, 0o755)
                if self._chmod:
                    os.chmod(path, 0o755)
                return name, path
            except OSError as err:
                if err.errno != errno.EEXIST:
                    raise
        raise OSError(errno.EEXIST, "no free snapshot directory name for seq %d" % seq)

    def _cleanup(self, keep):
        try:
            names = os.listdir(self.snap_dir)
        except OSError:
            return
        for name in names:
            if name in keep or not _NAME_RE.match(name):
                continue
            rmtree(os.path.join(self.snap_dir, name))
        for name in os.listdir(self.run_dir):
            if name.startswith(_TMP_PREFIX):
                _unlink_quiet(os.path.join(self.run_dir, name))


def current_dir(run_dir):
    """Resolve ``run_dir/current`` once; returns the snapshot directory path or raises NoData."""
    try:
        target = os.readlink(os.path.join(run_dir, CURRENT))
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            raise NoData("nothing published in %s" % run_dir)
        raise NoData("cannot read %s: %s" % (os.path.join(run_dir, CURRENT), err.strerror))
    return os.path.join(run_dir, target)


def read_current(run_dir, attempts=10):
    """Read the published values.json of one consistent snapshot; returns the dict.

    Retries when the snapshot is swapped away and removed under the reader.  Raises
    NoData when nothing is published or the document is unreadable.
    """
    last = None
    for _ in range(attempts):
        path = current_dir(run_dir)
        try:
            with open(os.path.join(path, "values.json"), "rb") as f:
                data = f.read()
        except (IOError, OSError) as err:
            if err.errno == errno.ENOENT:
                last = err
                time.sleep(0.01)
                continue
            raise NoData("cannot read %s: %s" % (path, err.strerror))
        try:
            return json.loads(data.decode("utf-8"))
        except ValueError as err:
            raise NoData("%s/values.json is not valid JSON: %s" % (path, err))
    raise NoData("snapshot kept changing while reading %s (%s)" % (run_dir, last))
