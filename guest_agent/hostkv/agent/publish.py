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

The path from a record to the switch is kept short (under TCG, right after a live
migration, every code path runs cold and costs tens of ms): after each publication,
:meth:`Publisher.cleanup` prepares the next seq's directory - ``keys/``, an empty file for
each current key, ``env`` and ``values.json``, all kept open - and the temporary symlink to
it, so the next publication is only writes into open files and one rename.  Files for
keys that are new are created then; files of keys that went away are unlinked before the
switch.  The spare directory is never ``current`` before it is complete.

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
MAX_SPARE_FILES = 64          # keys whose files are made (and kept open) ahead of a publication
_encode_string = json.encoder.encode_basestring     # the C encoder's string escaping (ensure_ascii off)


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


_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def _create(path, chmod, mode=0o644):
    """A new empty file, open for writing."""
    fd = os.open(path, _CREATE_FLAGS, mode)
    if chmod:
        try:
            os.fchmod(fd, mode)      # world-readable whatever the umask: any user may read values
        except BaseException:
            os.close(fd)
            raise
    return fd


def _write_all(fd, data):
    n = os.write(fd, data)
    if n < len(data):                # a short write (not on tmpfs, but possible elsewhere)
        view = memoryview(data)[n:]
        while view:
            view = view[os.write(fd, view):]


def _write_new(path, data, mode=0o644, chmod=True):
    fd = _create(path, chmod, mode)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


def _seconds(t):
    """A Unix time as a JSON number with microseconds, by integer arithmetic (float repr's
    shortest-digits algorithm is a lot of code to run cold after a migration)."""
    us = int(round(t * 1000000))
    return "%d.%06d" % (us // 1000000, us % 1000000)


def values_json_text(record):
    """values.json's text, rendered without the JSON encoder's machinery (only its C string
    escaping): the same document as ``json.dumps(record.to_json(), ensure_ascii=False,
    sort_keys=True)`` - byte for byte except that ``received_at`` has six decimals (a unit test
    holds it to that)."""
    values = record.values
    return ('{"connected": %s, "generation": %d, "host_id": %s, "received_at": %s, "seq": %d, '
            '"stale": %s, "values": {%s}}') % (
        "true" if record.connected else "false", record.generation, _encode_string(record.host_id),
        _seconds(record.received_at), record.seq, "true" if record.stale else "false",
        ", ".join([_encode_string(k) + ": " + _encode_string(values[k]) for k in sorted(values)]))


class _Spare(object):
    """The next seq's snapshot dir made ahead: open empty files and the symlink to swap in."""

    __slots__ = ("seq", "name", "path", "keys", "env", "doc", "link")

    def __init__(self, seq, name, path):
        self.seq, self.name, self.path = seq, name, path
        self.keys = {}               # key -> fd of the empty keys/<key>
        self.env = self.doc = None   # fds of the empty env and values.json
        self.link = None             # a temporary symlink to snapshots/<name>

    def fds(self):
        return list(self.keys.values()) + [fd for fd in (self.env, self.doc) if fd is not None]

    def close(self):
        for fd in self.fds():
            try:
                os.close(fd)
            except OSError:
                pass
        self.keys, self.env, self.doc = {}, None, None


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
    points instead of reading the link back at every publication.  ``last_text`` is the
    values.json text of the last publication (the control socket sends it as it is).
    """

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.snap_dir = os.path.join(run_dir, SNAPSHOTS)
        self.last_text = None
        self._keep = None            # what the pending cleanup() keeps (None: nothing pending)
        self._next_seq = None
        self._next_keys = ()
        self._current = _UNKNOWN     # the name ``current`` points to, as this publisher left it
        self._spare = None           # a _Spare for the next seq, made by cleanup()
        self._unfinished = None      # (fds, doc fd, record) of a publication finish() completes
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

    def close(self):
        """Release the spare's open files (the agent stops); the dir is removed at the next start."""
        self.finish()
        if self._spare is not None:
            self._spare.close()
            self._spare = None

    def current_name(self):
        """Name of the snapshot dir ``current`` points to, or None."""
        try:
            target = os.readlink(os.path.join(self.run_dir, CURRENT))
        except OSError:
            return None
        return os.path.basename(target.rstrip("/"))

    def publish(self, record, cleanup=True):
        """Publish ``record``; returns the snapshot dir name.  Raises OSError on I/O failure.

        ``cleanup=False``: leave the removal of older snapshot dirs and the next spare to
        :meth:`cleanup` (so a caller can answer its readers first); the next publish cleans
        up in any case.
        """
        self.finish()
        values = protocol.validate_values(record.values)   # keys become file names: re-check
        # the run dir is this agent's alone: after prepare() ``current`` is known without a
        # readlink (one system call less on the path to the readers)
        previous = self.current_name() if self._current is _UNKNOWN else self._current
        spare = self._spare
        if spare is not None and spare.seq == record.seq:
            self._spare = None           # used now (one for another seq waits for its own)
        else:
            spare = None
        if spare is not None:
            name, path = spare.name, spare.path
        else:
            name, path = self._fresh_dir(record.seq)
        text = values_json_text(record)
        env = envfile.render_env(values, record.seq).encode("utf-8")
        chmod = self._chmod
        keys_dir = os.path.join(path, "keys")
        opened = spare.fds() if spare is not None else []
        ready = spare.keys if spare is not None else {}
        try:
            if spare is None:
                os.mkdir(keys_dir, 0o755)
                if chmod:
                    os.chmod(keys_dir, 0o755)
            for key in sorted(values):
                fd = ready.pop(key, None)
                if fd is None:
                    fd = _create(os.path.join(keys_dir, key), chmod)
                    opened.append(fd)
                _write_all(fd, values[key].encode("utf-8"))
            for key in ready:            # made ahead for a key that has gone away
                os.unlink(os.path.join(keys_dir, key))
            doc_fd = None
            for fd, data, filename in ((spare.env if spare else None, env, "env"),
                                       (spare.doc if spare else None, text.encode("utf-8") + b"\n",
                                        "values.json")):
                if fd is None:
                    fd = _create(os.path.join(path, filename), chmod)
                    opened.append(fd)
                _write_all(fd, data)
                doc_fd = fd
        except BaseException:
            self._close_all(opened)
            rmtree(path)
            raise
        if previous is None:
            # the stable links before the very first switch (dangling until then), so that
            # once ``current`` exists every documented path resolves; later they are only
            # checked (and repaired if someone removed one) by cleanup(), after the switch
            try:
                self._ensure_links()
            except BaseException:
                self._close_all(opened)
                rmtree(path)
                raise
        self._current = _UNKNOWN
        try:
            self._swap(name, spare.link if spare is not None else None)
        except BaseException:
            self._close_all(opened)
            raise
        self._current = name
        # closing the files and checking the spare was not removed meanwhile wait for
        # finish() (cleanup() calls it): after the switch, off the readers' path
        self._unfinished = (opened, doc_fd if spare is not None else None, record)
        self.last_text = text
        keep = set([name])
        if previous:
            keep.add(previous)
        self._keep = keep
        self._next_seq = record.seq + 1
        self._next_keys = sorted(values)[:MAX_SPARE_FILES]
        if cleanup:
            self.cleanup()
        return name

    def finish(self):
        """The end of the last publication: close its files; if its spare dir had been removed
        by someone since it was made (``current`` would name nothing), publish again."""
        if self._unfinished is None:
            return
        opened, doc_fd, record = self._unfinished
        self._unfinished = None
        try:
            gone = doc_fd is not None and os.fstat(doc_fd).st_nlink == 0
        finally:
            self._close_all(opened)
        if gone:
            self._spare = None
            self.publish(record, cleanup=False)
            self.finish()

    def _swap(self, name, link):
        """Point ``current`` at snapshots/<name>: rename ``link`` (made ahead) over it."""
        current = os.path.join(self.run_dir, CURRENT)
        if link is not None:
            try:
                os.rename(link, current)
                return
            except OSError:
                _unlink_quiet(link)      # (removed by someone, or ``current`` is a real dir)
        _symlink_atomic(os.path.join(SNAPSHOTS, name), current)

    @staticmethod
    def _close_all(fds):
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        del fds[:]

    def cleanup(self):
        """The deferred part of :meth:`publish`: check the stable links, remove every
        snapshot dir but the current and previous one, and temporary links; then make the
        next seq's spare dir (never ``current`` before it is full)."""
        self.finish()
        if self._keep is None:
            return
        self._ensure_links()
        spare = self._spare
        if spare is not None and spare.seq != self._next_seq:
            spare.close()
            spare = self._spare = None
        keep, links = set(self._keep), set()
        if spare is not None:            # still waiting for its seq (e.g. only the status changed)
            keep.add(spare.name)
            links.add(os.path.basename(spare.link))
        self._cleanup(keep, links)
        self._keep = None
        if spare is None:
            try:
                self._spare = self._make_spare(self._next_seq, self._next_keys)
            except OSError:
                self._spare = None       # only an optimisation: publish() makes its own dir

    def _make_spare(self, seq, keys):
        name, path = self._fresh_dir(seq)
        spare = _Spare(seq, name, path)
        try:
            keys_dir = os.path.join(path, "keys")
            os.mkdir(keys_dir, 0o755)
            if self._chmod:
                os.chmod(keys_dir, 0o755)
            for key in keys:
                spare.keys[key] = _create(os.path.join(keys_dir, key), self._chmod)
            spare.env = _create(os.path.join(path, "env"), self._chmod)
            spare.doc = _create(os.path.join(path, "values.json"), self._chmod)
            link = os.path.join(self.run_dir, "%s%s.%d.next" % (_TMP_PREFIX, CURRENT, os.getpid()))
            _unlink_quiet(link)
            os.symlink(os.path.join(SNAPSHOTS, name), link)
            spare.link = link
        except BaseException:
            spare.close()
            rmtree(path)
            raise
        return spare

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

    def _cleanup(self, keep, keep_links=()):
        try:
            names = os.listdir(self.snap_dir)
        except OSError:
            return
        for name in names:
            if name in keep or not _NAME_RE.match(name):
                continue
            rmtree(os.path.join(self.snap_dir, name))
        for name in os.listdir(self.run_dir):
            if name.startswith(_TMP_PREFIX) and name not in keep_links:
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
