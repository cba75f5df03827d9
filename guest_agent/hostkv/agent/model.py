"""The agent's data model: the published :class:`Record` and the :class:`History` of changes.

``seq`` is the agent's own change counter and the watch token: it goes up by one each
time the *data* changes (the values or the host_id) and never goes backwards, also
across agent restarts (it is persisted in the cache).  The status fields (``stale``,
``connected``, ``received_at``) and the host's ``generation`` may be republished under
the same ``seq``.
"""

from hostkv import protocol

_MISSING = object()


class Record(object):
    """One state of the published data plus its status flags."""

    __slots__ = ("seq", "host_id", "generation", "values", "received_at", "stale", "connected",
                 "stale_reason")

    def __init__(self, seq, host_id, generation, values, received_at, stale, connected,
                 stale_reason=None):
        self.seq = seq
        self.host_id = host_id
        self.generation = generation
        self.values = values
        self.received_at = received_at
        self.stale = stale
        self.connected = connected
        # why the data is stale, for people (None when fresh); see freshness.py
        self.stale_reason = stale_reason if stale else None

    def copy(self, **changes):
        fields = dict((name, getattr(self, name)) for name in self.__slots__)
        fields.update(changes)
        return Record(**fields)

    def same_data(self, other):
        """True if ``other`` has the same host_id and values (what ``seq`` counts)."""
        return (other is not None and self.host_id == other.host_id
                and self.values == other.values)

    def to_json(self):
        """The values.json document."""
        return {"seq": self.seq, "host_id": self.host_id, "generation": self.generation,
                "stale": self.stale, "connected": self.connected,
                "received_at": self.received_at, "values": dict(self.values),
                "stale_reason": self.stale_reason}

    @classmethod
    def from_json(cls, doc):
        """Validate a values.json / cache document; raises ValueError naming the problem."""
        if not isinstance(doc, dict):
            raise ValueError("document is not a JSON object")
        seq = doc.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ValueError("seq must be a non-negative integer")
        generation = doc.get("generation")
        if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
            raise ValueError("generation must be a non-negative integer")
        received_at = doc.get("received_at")
        if not isinstance(received_at, (int, float)) or isinstance(received_at, bool):
            raise ValueError("received_at must be a number")
        try:
            host_id = protocol.validate_host_id(doc.get("host_id"))
            values = protocol.validate_values(doc.get("values"))
        except protocol.ProtocolError as err:
            raise ValueError(str(err))
        reason = doc.get("stale_reason")
        return cls(seq, host_id, generation, values, float(received_at),
                   bool(doc.get("stale", True)), bool(doc.get("connected", False)),
                   reason if isinstance(reason, str) else None)

    def __repr__(self):
        return "Record(seq=%d, host_id=%r, generation=%d, %d keys, stale=%s, connected=%s)" % (
            self.seq, self.host_id, self.generation, len(self.values), self.stale, self.connected)


def changed_keys(old_values, new_values):
    """Sorted keys added, removed or changed between two value mappings."""
    keys = set(old_values) | set(new_values)
    return sorted(k for k in keys if old_values.get(k, _MISSING) != new_values.get(k, _MISSING))


class History(object):
    """Old values of changed keys per seq, to answer "did KEY change since SEQ?".

    ``add(seq, old_values, new_values)`` records the step to ``seq``.  ``value_at(key,
    since)`` returns ``(known, value)``: the key's value (None if absent) in the snapshot
    that was current when ``since`` was; ``known`` is False when ``since`` is older than
    the remembered history (the caller must then assume a change).  Memory is bounded by
    ``max_steps`` steps and ``max_bytes`` of remembered values.
    """

    def __init__(self, current_seq, current_values, max_steps=1024, max_bytes=4 * 1024 * 1024):
        self.base_seq = current_seq        # oldest seq whose values can be reconstructed
        self.current_seq = current_seq
        self.current_values = dict(current_values)
        self.max_steps = max_steps
        self.max_bytes = max_bytes
        self._steps = []                   # [(seq, {key: old value or None}, size)]
        self._bytes = 0

    def add(self, seq, new_values):
        old = self.current_values
        diff = {}
        size = 0
        for key in changed_keys(old, new_values):
            value = old.get(key)
            diff[key] = value
            size += len(key) + (len(value) if value is not None else 0) + 16
        self._steps.append((seq, diff, size))
        self._bytes += size
        self.current_seq = seq
        self.current_values = dict(new_values)
        while self._steps and (len(self._steps) > self.max_steps or self._bytes > self.max_bytes):
            first_seq, _, first_size = self._steps.pop(0)
            self._bytes -= first_size
            self.base_seq = first_seq

    def value_at(self, key, since):
        if since == self.current_seq:
            return True, self.current_values.get(key)
        if since < self.base_seq or since > self.current_seq:
            return False, None
        value = self.current_values.get(key)
        for seq, diff, _ in reversed(self._steps):
            if seq <= since:
                break
            if key in diff:
                value = diff[key]
        return True, value
