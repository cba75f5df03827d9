"""The persistent cache /var/lib/hostkv/snapshot.json: the last data and its seq.

Written atomically and durably (:func:`hostkv.common.atomic.write_atomic`: temporary file,
fsync, rename, fsync of the directory) right *after*
each publication and before the next snapshot is looked at, so that the fsync is not on
the path from a snapshot to its watchers, and at most ONE publication (seq = cached seq
+ 1) can be ahead of the cache when the agent dies or the guest loses power.  The agent
(daemon.Agent.start) therefore restores a cache after an unclean stop under a seq that
skips that possibly lost one, and the agent's change counter never goes backwards nor
names two different data across restarts or reboots.

``clean``: written true by an agent that stopped cleanly (nothing can be ahead of the
cache then), and cleared again by the next agent before it publishes anything new.
"""

import errno
import json
import os

from hostkv.agent.model import Record
from hostkv.common import atomic

CACHE_FORMAT = 1
CACHE_NAME = "snapshot.json"


class CacheError(Exception):
    """The cache file exists but cannot be used (the message names the file and problem)."""


def cache_path(state_dir):
    return os.path.join(state_dir, CACHE_NAME)


def load(state_dir):
    """Return the cached :class:`Record` (stale, not connected), None if there is no cache.

    Raises CacheError if the file exists but is unreadable or invalid.
    """
    return load_state(state_dir)[0]


def load_state(state_dir):
    """Return ``(record, clean)``: :func:`load` plus the cache's ``clean`` flag.

    ``(None, False)`` if there is no cache; raises CacheError like :func:`load`.
    """
    path = cache_path(state_dir)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (IOError, OSError) as err:
        if err.errno == errno.ENOENT:
            return None, False
        raise CacheError("cannot read %s: %s" % (path, err.strerror))
    try:
        doc = json.loads(data.decode("utf-8"))
    except ValueError as err:
        raise CacheError("%s is not valid JSON: %s" % (path, err))
    if not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT:
        raise CacheError("%s: unknown format %r" % (path, doc.get("format") if isinstance(doc, dict) else doc))
    try:
        record = Record.from_json(doc)
    except ValueError as err:
        raise CacheError("%s: %s" % (path, err))
    return record.copy(stale=True, connected=False), doc.get("clean") is True


def save(state_dir, record, clean=False):
    """Atomically and durably replace the cache with ``record``'s data.  Raises OSError.

    ``clean=True`` only from an agent that stops and publishes nothing more.
    """
    try:
        os.makedirs(state_dir, 0o755)
    except OSError as err:
        if err.errno != errno.EEXIST:
            raise
    path = cache_path(state_dir)
    doc = {"format": CACHE_FORMAT, "seq": record.seq, "host_id": record.host_id,
           "generation": record.generation, "received_at": record.received_at,
           "values": record.values}
    if clean:
        doc["clean"] = True
    data = (json.dumps(doc, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
    atomic.write_atomic(path, data, mode=0o644, durable=True)
