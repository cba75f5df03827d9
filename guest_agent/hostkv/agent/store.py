"""The published data and its one owner: the Record, its seq and History; run dir and cache.

:class:`Store` is the only writer of /run/hostkv (through publish.Publisher) and of the cache
(cache.py).  The path from a snapshot to visible files is split in two on purpose:

  ``apply(snapshot, connected)``  the new data (seq + 1) or a confirmation of the current one,
                                  published - the swap of ``current`` is the last thing it does;
  ``persist(change)``             everything that can wait until the readers have been answered:
                                  the History step, the cache (its fsync is the slowest step),
                                  old snapshot dirs and the next seq's spare dir.
The cache is written before the next snapshot is handled (the loop calls ``persist`` right
after answering the watchers), so at most one publication is ever ahead of it (restore.py).

``restore()`` applies restore.plan() at start; ``link_changed(connected)`` republishes the
status flags; ``close()`` publishes the data stale and writes the cache with its clean flag.
A publication that fails (run dir unwritable) is retried every 5 s (``next_deadline``/``tick``).
"""

from hostkv import protocol
from hostkv.agent import cache, liveness, log, restore
from hostkv.agent.model import History, Record, changed_keys
from hostkv.agent.publish import NoData, Publisher, read_current

PUBLISH_RETRY = 5.0


class Change(object):
    """What ``apply`` did.  ``new_data``: a new seq (values or host_id changed); else only
    status/generation were republished.  ``prev`` is the record before.  ``timings`` collects
    the loop's time stamps of this publication (monotonic: read_at, parsed_at, swapped_at,
    answered_at, cached_at, hooks_at)."""

    __slots__ = ("record", "prev", "new_data", "first_confirmation", "timings")

    def __init__(self, record, prev, new_data, first_confirmation):
        self.record = record
        self.prev = prev
        self.new_data = new_data
        self.first_confirmation = first_confirmation
        self.timings = {}

    def changed(self):
        """(sorted changed keys, host changed?) - for hooks and the log; call after the swap."""
        prev_values = self.prev.values if self.prev is not None else {}
        host_changed = self.prev is None or self.prev.host_id != self.record.host_id
        return changed_keys(prev_values, self.record.values), host_changed


class Store(object):
    def __init__(self, run_dir, state_dir, wall, clock):
        self.run_dir = run_dir
        self.state_dir = state_dir
        self.wall = wall
        self.clock = clock
        self.log = log.get_logger()
        self.publisher = Publisher(run_dir)
        self.record = None           # what is published (None: nothing yet)
        self.seq = 0
        self.history = None
        self.last_change = None
        self.stats = {"snapshots": 0, "publications": 0}
        self._confirmed = False      # the host confirmed the data since this agent started
        self._retry_at = None
        self._published = None       # the record the run dir shows
        self.lock = liveness.AgentLock(run_dir)
        self.undeliverable = None    # the host's message while it cannot deliver our values

    # ------------------------------------------------------------ start and stop

    def make_dirs(self):
        """Create the run dir (the control socket lives there too) before anything else."""
        self.publisher.make_dirs()

    def restore(self):
        """Publish what restore.plan() says (stale), or nothing; set up History."""
        self.publisher.prepare()
        cached, clean = None, False
        try:
            cached, clean = cache.load_state(self.state_dir)
        except cache.CacheError as err:
            self.log.warning("ignoring the cache: %s", err)
        published = None
        try:
            published = Record.from_json(read_current(self.run_dir))
        except (NoData, ValueError):
            pass
        restored = restore.plan(cached, clean, published)
        if restored is not None:
            if restored.save:
                self._save_cache(restored.record)
            self.record = restored.record.copy(
                stale_reason="restored from %s at start; not yet confirmed by the host" % restored.source)
            self.seq = restored.record.seq
            self.log.info("restored seq %d (host %r, %d keys) from %s; published as stale",
                          self.seq, self.record.host_id, len(self.record.values), restored.source)
            self._publish()          # takes agent.lock once the run dir shows the data stale
        else:
            self.log.info("no cached data; waiting for the host")
            self._hold_lock()
        self.history = History(self.seq, self.record.values if self.record else {})

    def close(self):
        """The agent stops: the data is republished stale and the cache marked clean."""
        if self.record is None:
            self.publisher.close()
            self.lock.release()
            return
        if self.record.connected or not self.record.stale:
            self.record = self.record.copy(connected=False, stale=True, stale_reason="the agent stopped")
            self._publish()
        self._save_cache(self.record, clean=True)      # nothing is ahead of it: see restore.py
        self.publisher.close()
        self.lock.release()

    # ------------------------------------------------------------ data

    def apply(self, snap, connected):
        """Publish ``snap``; returns the :class:`Change` (the swap is its last step)."""
        self.stats["snapshots"] += 1
        self.undeliverable = None
        prev = self.record
        now = self.wall()
        if prev is None or not prev.same_data(snap):
            self.seq += 1
            # snap.values is a fresh dict made by the protocol's validation: no copy needed
            self.record = Record(self.seq, snap.host_id, snap.generation, snap.values, now, False,
                                 connected)
            change = Change(self.record, prev, True, False)
            self._confirmed = True
        else:
            self.record = prev.copy(generation=snap.generation, received_at=now, stale=False,
                                    connected=connected)
            change = Change(self.record, prev, False, not self._confirmed)
            self._confirmed = True
        self._publish(cleanup=False)
        if change.new_data or self.last_change is None:
            self.last_change = change    # status "timings": the last publication of new data
        return change

    def persist(self, change):
        """The part of a publication that waits until the readers were answered."""
        if change.new_data:
            self.history.add(change.record.seq, change.record.values)
            self._save_cache(change.record)
        elif change.prev.generation != change.record.generation:
            self._save_cache(change.record)
        self.publisher.cleanup()

    def record_text(self):
        """values.json's text of the current record, or None if that is not what is published."""
        if self.record is not None and self._published is self.record:
            return self.publisher.last_text
        return None

    def value_at(self, key, since):
        """(known, value) of ``key`` in the data that was current at ``since``; valid also
        between ``apply`` and ``persist`` (History then still ends at the previous seq)."""
        return self.history.value_at(key, since)

    def link_changed(self, connected):
        """Republish the status flags for the link's new state."""
        record = self.record
        if record is None:
            return
        if connected and not record.connected:
            self.record = record.copy(connected=True, stale_reason=(
                "host connected; waiting for its snapshot" if record.stale else None))
        elif not connected and (record.connected or not record.stale):
            self.record = record.copy(connected=False, stale=True, stale_reason="host not connected")
        else:
            return
        self._publish()

    def snapshot_undeliverable(self, message):
        """The host cannot deliver our values (docs/PROTOCOL.md): publish what we have stale,
        with the host's reason, until the next snapshot.  True the first time (log it then)."""
        first = self.undeliverable is None
        self.undeliverable = message
        record = self.record
        reason = "the host cannot deliver this guest's current values: %s" % message
        if record is not None and (not record.stale or record.stale_reason != reason):
            self.record = record.copy(stale=True, stale_reason=reason)
            self._publish()
        return first

    def status(self):
        reply = {"seq": self.seq, "published": self.record is not None, "run_dir": self.run_dir,
                 "undeliverable": self.undeliverable}
        record = self.record
        if record is not None:
            reply.update(host_id=record.host_id, generation=record.generation, stale=record.stale,
                         stale_reason=record.stale_reason, connected_published=record.connected,
                         received_at=record.received_at, keys=len(record.values))
        if self.last_change is not None and self.last_change.timings:
            reply["timings"] = dict(self.last_change.timings, seq=self.last_change.record.seq)
        return reply

    # ------------------------------------------------------------ retries

    def next_deadline(self):
        return self._retry_at

    def tick(self, now):
        if self._retry_at is not None and now >= self._retry_at:
            self._publish()

    # ------------------------------------------------------------ writing

    def _save_cache(self, record, clean=False):
        try:
            cache.save(self.state_dir, record, clean=clean)
        except OSError as err:
            self.log.error("cannot write the cache in %s: %s", self.state_dir, err)

    def _publish(self, cleanup=True):
        if self.record is None:
            return
        try:
            self.publisher.publish(self.record, cleanup=cleanup)
        except (OSError, protocol.ProtocolError) as err:
            self.log.error("cannot publish seq %d in %s: %s; retrying in %.0f s",
                           self.record.seq, self.run_dir, err, PUBLISH_RETRY)
            self._retry_at = self.clock() + PUBLISH_RETRY
            return
        self.stats["publications"] += 1
        self._retry_at = None
        self._published = self.record
        self._hold_lock()

    def _hold_lock(self):
        """Hold agent.lock (liveness.py) from now on - only once the run dir shows this agent's
        own publication or none, never a killed agent's last words."""
        if self.lock.fd is not None:
            return
        try:
            self.lock.acquire()
        except OSError as err:
            # readers then see the data as stale (the safe side); tried again at each publication
            self.log.error("cannot hold %s: %s; readers will see the data as stale", self.lock.path, err)
