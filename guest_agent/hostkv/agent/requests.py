"""The local requests and their one owner: what clients of the control socket are waiting for.

:class:`LocalRequests` answers ``status``, ``get``, ``watch`` and ``ping`` (docs/AGENT.md), and
owns the watchers waiting for a change and the live gets waiting for the host, with their
timeouts.  It reads the data from the :class:`~hostkv.agent.store.Store` and sends live gets
through the :class:`~hostkv.agent.link.Link` (both passed in; it calls down, never up).

The loop hands it what happened and gets back the clients it answered (so the control socket
can go on with their pipelined requests): ``handle(client, request, now)`` (a reply, or None when
the answer comes later), ``on_change(change)``, ``on_reply(reply, now)``, ``link_changed(event)``,
``tick(now)`` / ``next_deadline()``, ``client_closed(client)``, ``shutdown()``.
"""

import json
import os
import sys

from hostkv import protocol
from hostkv.agent import VERSION
from hostkv.agent.control import error_reply
from hostkv.agent.link import NotConnected

MAX_LIVE_REQUESTS = 64
DEFAULT_LIVE_TIMEOUT = 5.0
MAX_LIVE_TIMEOUT = 300.0

# the link's states as `hostkv status` has always shown them
_STATE_NAMES = {"no-port": "waiting-for-port", "disconnected": "disconnected"}


class _Watcher(object):
    __slots__ = ("client", "since", "key", "deadline")

    def __init__(self, client, since, key, deadline):
        self.client = client
        self.since = since
        self.key = key
        self.deadline = deadline


class _LiveGet(object):
    __slots__ = ("client", "key", "deadline", "started")

    def __init__(self, client, key, deadline, started):
        self.client = client
        self.key = key
        self.deadline = deadline
        self.started = started


class LocalRequests(object):
    def __init__(self, store, link, clock, wall):
        self.store = store
        self.link = link
        self.clock = clock
        self.wall = wall
        self.watchers = []
        self.live = {}               # link request id -> _LiveGet

    # ------------------------------------------------------------ requests

    def handle(self, client, req, now):
        op = req.get("op")
        if op == "status":
            return self.status(now)
        if op == "ping":
            return {"ok": True, "op": "pong"}
        if op == "get":
            return self._get(client, req, now)
        if op == "watch":
            return self._watch(client, req, now)
        return error_reply("unknown-op", "unknown op %r (status, get, watch, ping)" % str(op)[:32])

    def status(self, now):
        link = self.link.status()
        reply = {"ok": True, "pid": os.getpid(), "version": VERSION,
                 "state": _STATE_NAMES.get(link["link"], "connected"), "link": link["link"],
                 "link_since": self.wall() - (now - link["since"]),
                 "link_since_monotonic": link["since"], "port": link["port"],
                 "connected": link["connected"], "in_sync": link["in_sync"],
                 "host_protocol_version": link["host_version"], "modules": len(sys.modules)}
        reply.update(self.store.status())
        reply["stats"] = dict(link["stats"], **self.store.stats)
        return reply

    def _get(self, client, req, now):
        try:
            key = protocol.validate_key(req.get("key"))
        except protocol.ProtocolError as err:
            return error_reply("bad-key", str(err))
        record = self.store.record
        if not req.get("live"):
            if record is None:
                return error_reply("no-data", "no data received from the host yet")
            if key not in record.values:
                return error_reply("not-found", "no key %s" % key, seq=self.store.seq)
            return {"ok": True, "key": key, "value": record.values[key], "seq": self.store.seq,
                    "stale": record.stale, "host_id": record.host_id}
        timeout = req.get("timeout", DEFAULT_LIVE_TIMEOUT)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) \
                or not 0 < timeout <= MAX_LIVE_TIMEOUT:
            return error_reply("bad-request", "timeout must be a number of seconds in (0, 300]")
        if len(self.live) >= MAX_LIVE_REQUESTS:
            return error_reply("busy", "too many live requests in flight")
        try:
            req_id = self.link.get(key)
        except NotConnected:
            return error_reply("not-connected", "the host is not connected")
        self.live[req_id] = _LiveGet(client, key, now + timeout, now)
        return None

    def _watch(self, client, req, now):
        since = req.get("since")
        if since is None:
            since = self.store.seq
        if not isinstance(since, int) or isinstance(since, bool) or since < 0:
            return error_reply("bad-request", "since must be a non-negative integer")
        key = req.get("key")
        if key is not None:
            try:
                protocol.validate_key(key)
            except protocol.ProtocolError as err:
                return error_reply("bad-key", str(err))
        timeout = req.get("timeout")
        if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
                                    or timeout < 0):
            return error_reply("bad-request", "timeout must be a non-negative number of seconds")
        watcher = _Watcher(client, since, key, None if timeout is None else now + timeout)
        if self._ready(watcher):
            return self._watch_reply(watcher)
        self.watchers.append(watcher)
        return None

    # ------------------------------------------------------------ what happened

    def on_change(self, change):
        """New data was published: answer the watchers it concerns (at once); their clients."""
        if not self.watchers:
            return []
        ready = [w for w in self.watchers if self._ready(w)]
        for w in ready:
            self.watchers.remove(w)
            w.client.reply(self._watch_reply(w))      # sent at once (see ControlClient.reply)
        return [w.client for w in ready]

    def on_reply(self, reply, now):
        """A reply from the host to one of our live gets; the client answered (list)."""
        g = self.live.pop(reply.id, None)
        if g is None:
            return []
        rtt = now - g.started
        if isinstance(reply, protocol.Value):
            g.client.reply({"ok": True, "key": g.key, "value": reply.value, "host_id": reply.host_id,
                            "generation": reply.generation, "live": True, "rtt": rtt})
        elif isinstance(reply, protocol.Error):
            g.client.reply(error_reply(reply.code, reply.message, rtt=rtt))
        else:
            g.client.reply(error_reply("bad-reply", "unexpected reply from the host"))
        return [g.client]

    def link_changed(self, event):
        """The host went away: the live gets fail (the watchers keep waiting)."""
        if event.connected or not self.live:
            return []
        return self._fail_live(list(self.live), "not-connected", "the host disconnected")

    def tick(self, now):
        """Answer the requests whose timeout passed; the clients answered."""
        answered = []
        for w in [w for w in self.watchers if w.deadline is not None and now >= w.deadline]:
            self.watchers.remove(w)
            w.client.reply(error_reply("timeout", "no change within the timeout", seq=self.store.seq,
                                       since=w.since))
            answered.append(w.client)
        expired = [req_id for req_id, g in self.live.items() if now >= g.deadline]
        return answered + self._fail_live(expired, "timeout", "the host did not answer in time")

    def next_deadline(self):
        deadlines = [w.deadline for w in self.watchers if w.deadline is not None]
        deadlines.extend(g.deadline for g in self.live.values())
        return min(deadlines) if deadlines else None

    def client_closed(self, client):
        self.watchers = [w for w in self.watchers if w.client is not client]
        for req_id in [req_id for req_id, g in self.live.items() if g.client is client]:
            del self.live[req_id]
            self.link.cancel(req_id)

    def shutdown(self):
        for w in self.watchers:
            w.client.reply(error_reply("shutdown", "the agent is stopping", seq=self.store.seq,
                                       since=w.since))
        self.watchers = []
        self._fail_live(list(self.live), "shutdown", "the agent is stopping")

    # ------------------------------------------------------------ helpers

    def _fail_live(self, req_ids, code, message):
        clients = []
        for req_id in req_ids:
            g = self.live.pop(req_id)
            self.link.cancel(req_id)
            g.client.reply(error_reply(code, message))
            clients.append(g.client)
        return clients

    def _ready(self, w):
        record = self.store.record
        if record is None or w.since == self.store.seq:
            return False
        if w.key is None:
            return True
        known, old = self.store.value_at(w.key, w.since)
        return not known or old != record.values.get(w.key)

    def _watch_reply(self, w):
        record = self.store.record
        text = self.store.record_text()
        if text is None:                 # (the publication failed: nothing to splice)
            reply = {"ok": True, "seq": self.store.seq, "since": w.since, "snapshot": record.to_json()}
            if w.key is not None:
                reply.update(key=w.key, present=w.key in record.values, value=record.values.get(w.key))
            return reply
        # the published values.json text spliced in as it is: no JSON encoding on the way from
        # a snapshot to its watchers (test_agent_daemon checks these replies parse as before)
        line = '{"ok": true, "seq": %d, "since": %d, "snapshot": %s' % (self.store.seq, w.since, text)
        if w.key is not None:
            value = record.values.get(w.key)
            line += ', "key": %s, "present": %s, "value": %s' % (
                _encode_string(w.key), "false" if value is None else "true",
                "null" if value is None else _encode_string(value))
        return (line + "}\n").encode("utf-8")


_encode_string = json.encoder.encode_basestring
