"""The seq rules at start: what to publish from the cache and the run dir (a pure function).

The cache is written right after each publication and before the next snapshot is handled
(see cache.py), so at most ONE publication can be ahead of it.  From what is found at start:

  ``cached``     the cache's Record (None: no usable cache), ``clean`` its clean flag;
  ``published``  the Record in the run dir's values.json (None: nothing, e.g. after a reboot);

:func:`plan` decides, without touching anything:
  * the run dir is ahead of the cache (agent killed between a publication and its cache
    write, no reboot): adopt what is published, under its own seq;
  * the run dir has the cache's seq but other data: the cache's data under seq + 1 (a seq
    never names two different data);
  * no run dir (a reboot) and the cache was not written by a clean stop: the seq after the
    cached one may have been published and lost, so the cached data comes back under cached
    seq + 2 (one seq skipped, none reused for other data);
  * otherwise the cache's seq is kept.
Whatever is restored is published stale and not connected, and written back to the cache
(without ``clean``) before anything new can be published (``save``), unless the cache already
holds exactly that without a clean flag.
"""


class Restored(object):
    """What to publish at start: ``record`` (stale, not connected), where it came from
    (``source``: "the run dir" or "the cache") and whether to ``save`` it to the cache first."""

    __slots__ = ("record", "source", "save")

    def __init__(self, record, source, save):
        self.record = record
        self.source = source
        self.save = save

    def __eq__(self, other):
        return (isinstance(other, Restored) and self.source == other.source and self.save == other.save
                and self.record.seq == other.record.seq and self.record.same_data(other.record)
                and self.record.stale == other.record.stale
                and self.record.connected == other.record.connected)

    def __ne__(self, other):
        return not self == other

    __hash__ = None

    def __repr__(self):
        return "Restored(%r, %r, save=%r)" % (self.record, self.source, self.save)


def plan(cached, clean, published):
    """Apply the seq rules above; returns a :class:`Restored`, or None when there is nothing."""
    if published is not None and (cached is None or published.seq > cached.seq):
        record, source, save = published, "the run dir", True
    elif cached is not None:
        # a clean cache is rewritten without its clean flag; an unclean one is already right
        record, source, save = cached, "the cache", clean
        if published is not None and published.seq == cached.seq and not published.same_data(cached):
            record, save = cached.copy(seq=cached.seq + 1), True    # never reuse a seq for other data
        elif published is None and not clean:
            record, save = cached.copy(seq=cached.seq + 2), True    # cached.seq + 1 may have been lost
    else:
        return None
    return Restored(record.copy(stale=True, connected=False), source, save)
