"""The agent's poll loop: port <-> GuestSession <-> publication, cache, hooks, control socket.

:class:`Agent` is single-threaded (hooks run in their own thread).  The loop:
  * no port: look for it every ``rescan_interval`` (1 s), so a hot-plugged port is found;
  * port open, host away: the port is level-triggered POLLHUP, so it is NOT polled;
    instead :meth:`Port.probe` runs on a backoff timer (50 ms doubling to 1 s);
  * connect edge: ``session.connected()``, send hello + sync, mark the data ``connected``;
  * connected: poll the port for input (and output while the outbox is not empty);
    snapshots are accepted at any time (the host pushes unasked, e.g. after a migration);
    a sync unanswered for ``sync_timeout`` (2 s) is started again;
  * disconnect edge: drop the outbox, mark the data stale and not connected;
  * unplug (ENODEV/EIO): close the port and go back to looking for it.
Every blocking wait is a poll() with a timeout computed from the timers above.
"""

import errno
import gc
import os
import select
import signal
import threading
import time

from hostkv import protocol
from hostkv.agent import VERSION, cache, log
from hostkv.agent.control import ControlServer, error_reply
from hostkv.agent.hooks import HookRunner
from hostkv.agent.model import History, Record, changed_keys
from hostkv.agent.port import CONNECTED, PortGone, PortLocator
from hostkv.agent.publish import NoData, Publisher, read_current

BACKOFF_MIN = 0.05
BACKOFF_MAX = 1.0
MAX_OUTBOX = 1024 * 1024
MAX_LIVE_REQUESTS = 64
DEFAULT_LIVE_TIMEOUT = 5.0
MAX_WAIT = 1.0
READS_PER_WAKEUP = 32


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


class Agent(object):
    """The guest agent.  ``run()`` blocks until ``stop()`` (or SIGTERM/SIGINT in the main thread)."""

    def __init__(self, cfg, locator=None, clock=time.monotonic, wall=time.time):
        self.cfg = cfg
        self.log = log.get_logger()
        self.clock = clock
        self.wall = wall
        self.locator = locator or PortLocator(cfg.port_name, device=cfg.device, dev_dir=cfg.dev_dir,
                                              sysfs_dir=cfg.sysfs_dir, node_dir=cfg.run_dir)
        self.publisher = Publisher(cfg.run_dir)
        self.session = protocol.GuestSession(agent_name="hostkv-agent/" + VERSION)
        self.hooks = HookRunner(cfg.hooks_dir, cfg.run_dir, cfg.hook_timeout)
        self.control = ControlServer(cfg.socket, self._handle_request, self._client_closed)
        self.port = None
        self.connected = False
        self.record = None           # the published Record (None: nothing to publish yet)
        self.seq = 0
        self.history = None
        self.outbox = bytearray()
        self.watchers = []
        self.live_queue = []         # _LiveGet waiting for the channel to be in sync
        self.live_inflight = {}      # request id -> _LiveGet
        self.host_version = None
        self._next_scan = 0.0
        self._backoff = BACKOFF_MIN
        self._next_probe = 0.0
        self._sync_token = None
        self._sync_started = None
        self._sync_retries = 0
        self._last_synced = None
        self._publish_retry_at = None
        self._last_reason = None
        self._discard_logged_at = None
        self._discarded = 0
        self._discard_streak = 0     # consecutive syncs ended by bad input (reset by good data)
        self._hold_until = None      # hold the outbox until then (backoff after bad input)
        self._confirmed = False      # the host has confirmed the data since this agent started
        self._stop = False
        self._poller = None          # see _poll_set()
        self._polled = {}
        self._fed_at = None          # when the last input from the port was read (for the log)
        self._resync_requested = False
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self.started = threading.Event()    # set once the socket is listening (tests)
        self.stats = {"connects": 0, "disconnects": 0, "snapshots": 0, "publications": 0,
                      "discarded": 0, "syncs": 0}

    # ------------------------------------------------------------ life cycle

    def start(self):
        """Restore the cache, publish it as stale, open the control socket and hooks thread.

        The seq rules (the cache is written right after each publication, so at most one
        publication can be ahead of it, see cache.py):
          * the run dir is ahead of the cache (agent killed between a publication and its
            cache write; no reboot): adopt what is published, under its own seq;
          * the run dir has the cache's seq but other data: the cache's data under a new seq;
          * no run dir (a reboot) and the cache was not written by a clean stop: the seq
            after the cached one may have been published and lost, so the cached data is
            restored under cached seq + 2 (one seq skipped, none reused for other data);
          * otherwise the cache's seq is kept.
        Whatever is restored is written back to the cache (without ``clean``) before anything
        new can be published.
        """
        self.publisher.prepare()
        cached, clean = None, False
        try:
            cached, clean = cache.load_state(self.cfg.state_dir)
        except cache.CacheError as err:
            self.log.warning("ignoring the cache: %s", err)
        published = None
        try:
            published = Record.from_json(read_current(self.cfg.run_dir))
        except (NoData, ValueError):
            pass
        record, source, save = None, None, False
        if published is not None and (cached is None or published.seq > cached.seq):
            record, source, save = published, "the run dir", True
        elif cached is not None:
            record, source, save = cached, "the cache", clean
            if published is not None and published.seq == cached.seq and not published.same_data(cached):
                record, save = cached.copy(seq=cached.seq + 1), True   # never reuse a seq for other data
            elif published is None and not clean:
                record, save = cached.copy(seq=cached.seq + 2), True   # cached.seq + 1 may have been lost
        if record is not None:
            record = record.copy(stale=True, connected=False)
            if save:
                self._save_cache(record)
            self.seq = record.seq
            self.record = record
            self.log.info("restored seq %d (host %r, %d keys) from %s; published as stale",
                          record.seq, record.host_id, len(record.values), source)
            self._publish()
        else:
            self.seq = 0
            self.log.info("no cached data; waiting for the host")
        self.history = History(self.seq, self.record.values if self.record else {})
        self.control.open()
        self.hooks.start()
        self.started.set()

    def stop(self):
        """Ask the loop to end (thread-safe)."""
        self._stop = True
        self._wake()

    def _wake(self):
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def run(self):
        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
            signal.signal(signal.SIGHUP, self._on_signal)
            signal.set_wakeup_fd(self._wake_w)
        try:
            self.start()
            if hasattr(gc, "freeze"):        # 3.7+: start-up objects are never scanned again
                gc.freeze()
            self.log.info("hostkv-agent %s running; port %s, publishing to %s",
                          VERSION, self.cfg.device or self.cfg.port_name, self.cfg.run_dir)
            while not self._stop:
                self._iterate()
        finally:
            self._shutdown()
            if in_main:
                signal.set_wakeup_fd(-1)

    def _on_signal(self, signum, frame):
        if signum == signal.SIGHUP:
            self._resync_requested = True
        else:
            self._stop = True

    def _shutdown(self):
        self.log.info("stopping")
        for watcher in self.watchers:
            watcher.client.reply(error_reply("shutdown", "the agent is stopping", seq=self.seq,
                                             since=watcher.since))
        self.watchers = []
        self._fail_live(self.live_queue + list(self.live_inflight.values()), "shutdown",
                        "the agent is stopping")
        if self.record is not None and (self.record.connected or not self.record.stale):
            self.record = self.record.copy(connected=False, stale=True)
            self._publish()
        self.control.flush_all()
        if self.record is not None:
            self._save_cache(self.record, clean=True)      # nothing is ahead of it: see start()
        self.control.close()
        self.hooks.stop()
        if self.port is not None:
            self.port.close()
            self.port = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    # ------------------------------------------------------------ the loop

    def _iterate(self):
        now = self.clock()
        self._timers(now)
        wanted = {self._wake_r: select.POLLIN}
        for fd, events in self.control.poll_fds():
            wanted[fd] = events
        port_fd = None
        if self.port is not None and self.connected:
            port_fd = self.port.fileno()
            wanted[port_fd] = select.POLLIN | (select.POLLOUT if self.outbox else 0)
        poller = self._poll_set(wanted)
        timeout = max(0.0, min(self._next_deadline(now) - self.clock(), MAX_WAIT))
        try:
            events = poller.poll(int(timeout * 1000) + (1 if timeout > 0 else 0))
        except (OSError, select.error) as err:
            if getattr(err, "errno", None) == errno.EINTR or (err.args and err.args[0] == errno.EINTR):
                return
            raise
        for fd, revents in events:
            if fd == self._wake_r:
                try:
                    while os.read(self._wake_r, 512):
                        pass
                except OSError:
                    pass
            elif fd == port_fd:
                self._on_port_event(revents)
            elif self.control.owns(fd):
                self.control.on_event(fd, revents)

    def _poll_set(self, wanted):
        """One poll object for the agent's life, changed only where ``wanted`` ({fd: events})
        differs from the last iteration (an idle wake-up re-registers nothing)."""
        if self._poller is None:
            self._poller, self._polled = select.poll(), {}
        for fd in [fd for fd in self._polled if fd not in wanted]:
            self._poller.unregister(fd)
            del self._polled[fd]
        for fd, events in wanted.items():
            if self._polled.get(fd) != events:
                self._poller.register(fd, events)       # register() also modifies
                self._polled[fd] = events
        return self._poller

    def _next_deadline(self, now):
        deadlines = [now + MAX_WAIT]
        if self.port is None:
            deadlines.append(self._next_scan)
        elif not self.connected:
            deadlines.append(self._next_probe)
        else:
            if self._sync_token is not None and self._sync_started is not None:
                deadlines.append(self._sync_started + self.cfg.sync_timeout)
        deadlines.extend(w.deadline for w in self.watchers if w.deadline is not None)
        deadlines.extend(g.deadline for g in self.live_queue)
        deadlines.extend(g.deadline for g in self.live_inflight.values())
        if self._publish_retry_at is not None:
            deadlines.append(self._publish_retry_at)
        if self._hold_until is not None and self.outbox:
            deadlines.append(self._hold_until)
        return min(deadlines)

    def _timers(self, now):
        if self.port is None and now >= self._next_scan:
            self._scan(now)
        if self.port is not None and not self.connected and now >= self._next_probe:
            self._probe(now)
        if self.connected:
            if self._sync_token is not None and now - self._sync_started >= self.cfg.sync_timeout:
                self._sync_retries += 1
                level = self.log.warning if self._sync_retries in (1, 10) or self._sync_retries % 100 == 0 \
                    else self.log.debug
                level("no sync reply from the host for %.1f s; starting a new sync (attempt %d)",
                      self.cfg.sync_timeout, self._sync_retries + 1)
                self._start_sync(now)
            elif self._sync_token is None and (self._resync_requested or (
                    self.cfg.resync_interval and self._last_synced is not None
                    and now - self._last_synced >= self.cfg.resync_interval)):
                self.log.debug("periodic re-sync")
                self._start_sync(now)
        self._resync_requested = False
        for watcher in [w for w in self.watchers if w.deadline is not None and now >= w.deadline]:
            self.watchers.remove(watcher)
            watcher.client.reply(error_reply("timeout", "no change within the timeout", seq=self.seq,
                                             since=watcher.since))
        expired = [g for g in self.live_queue if now >= g.deadline]
        for req_id, g in list(self.live_inflight.items()):
            if now >= g.deadline:
                del self.live_inflight[req_id]
                expired.append(g)
        self.live_queue = [g for g in self.live_queue if now < g.deadline]
        self._fail_live(expired, "timeout", "the host did not answer in time")
        if self._publish_retry_at is not None and now >= self._publish_retry_at:
            self._publish()
        if self._hold_until is not None and now >= self._hold_until:
            self._hold_until = None
            self._flush()

    # ------------------------------------------------------------ the port

    def _scan(self, now):
        port = self.locator.locate()
        if port is None:
            reason = self.locator.last_reason
            if reason != self._last_reason:
                self.log.warning("waiting for the port: %s", reason)
                self._last_reason = reason
            self._next_scan = now + self.cfg.rescan_interval
            return
        self._last_reason = None
        self.port = port
        self.connected = False
        self._backoff = BACKOFF_MIN
        self._next_probe = now
        self.log.info("opened port %s", port.path)
        self._probe(now)

    def _probe(self, now):
        try:
            state = self.port.probe()
        except PortGone as err:
            self._port_gone(err)
            return
        if state == CONNECTED:
            self._on_connect(now)
        else:
            self._next_probe = now + self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def _on_connect(self, now):
        self.connected = True
        self.stats["connects"] += 1
        self._backoff = BACKOFF_MIN
        self.outbox = bytearray()
        self.session.connected()
        self._requeue_inflight()
        self._sync_retries = 0
        self._discard_streak = 0
        self._hold_until = None
        self._note_sync(now)
        self.log.info("host connected on %s", self.port.path)
        if self.record is not None and not self.record.connected:
            self.record = self.record.copy(connected=True)
            self._publish()
        self._send()

    def _on_disconnect(self, reason):
        self.connected = False
        self.stats["disconnects"] += 1
        self.outbox = bytearray()
        self.session.data_to_send()          # drop whatever was queued for the old connection
        self._sync_token = None
        self._requeue_inflight()
        self._backoff = BACKOFF_MIN
        self._next_probe = self.clock() + BACKOFF_MIN
        self.log.warning("host disconnected (%s)", reason)
        if self.record is not None:
            self.record = self.record.copy(connected=False, stale=True)
            self._publish()
        self._fail_live(self.live_queue, "not-connected", "the host disconnected")
        self.live_queue = []

    def _port_gone(self, err):
        self.log.warning("port lost: %s; looking for it again", err)
        if self.connected:
            self._on_disconnect("port gone")
        if self.port is not None:
            self.port.close()
            self.port = None
        self._next_scan = self.clock() + min(self.cfg.rescan_interval, 0.2)

    def _on_port_event(self, revents):
        if revents & select.POLLNVAL:
            self._port_gone(PortGone("poll reported POLLNVAL"))
            return
        if revents & (select.POLLIN | select.POLLHUP | select.POLLERR):
            for _ in range(READS_PER_WAKEUP):
                try:
                    data = self.port.read()
                except PortGone as err:
                    self._port_gone(err)
                    return
                if data is None:
                    if revents & (select.POLLHUP | select.POLLERR):
                        self._probe_after_hup()
                    break
                if not data:
                    self._on_disconnect("end of input")
                    return
                self._feed(data)
                if not self.connected or self.port is None:
                    return
        if self.connected and (revents & select.POLLOUT):
            self._flush()

    def _probe_after_hup(self):
        try:
            if self.port.probe() != CONNECTED:
                self._on_disconnect("hang-up")
        except PortGone as err:
            self._port_gone(err)

    def _feed(self, data):
        now = self._fed_at = self.clock()
        discarded = False
        latest = None          # of several snapshots read at once only the last one matters
        for event in self.session.receive(data):
            if isinstance(event, protocol.SnapshotReceived):
                self._discard_streak = 0
                latest = event.snapshot
            elif isinstance(event, protocol.Resynced):
                self.stats["syncs"] += 1
                self._sync_token = None
                self._last_synced = now
                if self._sync_retries:
                    self.log.info("channel in sync again")
                self._sync_retries = 0
                self._send_live_queue()
            elif isinstance(event, protocol.ReplyReceived):
                self._on_reply(event.frame)
            elif isinstance(event, protocol.InputDiscarded):
                discarded = True
                self._on_discarded(event.error, now)
        if latest is not None:
            self._on_snapshot(latest)
        if self.session.sync_token is not None and self.session.sync_token != self._sync_token:
            self._note_sync(now)             # the session started a sync after bad input
            self._requeue_inflight()
            if discarded:
                # a host that answers every sync with bad data must not make us spin:
                # hold the new sync back, 0.1 s doubling to 5 s while it goes on
                self._discard_streak += 1
                if self._discard_streak > 1:
                    hold = min(0.05 * 2 ** (self._discard_streak - 1), 5.0)
                    self._hold_until = now + hold
                    self._sync_started = now + hold
        self._send()

    def _on_discarded(self, error, now):
        self.stats["discarded"] += 1
        self._discarded += 1
        if self._discard_logged_at is None or now - self._discard_logged_at >= 10.0:
            self.log.warning("discarded input from the host (%s; %d line(s) since the last report); "
                             "re-syncing", str(error)[:120], self._discarded)
            self._discard_logged_at = now
            self._discarded = 0

    def _note_sync(self, now):
        self._sync_token = self.session.sync_token
        self._sync_started = now

    def _start_sync(self, now):
        self.session.start_sync()
        self._note_sync(now)
        self._requeue_inflight()
        self._send()

    def _send(self):
        data = self.session.data_to_send()
        if data and self.connected:
            if len(self.outbox) + len(data) > MAX_OUTBOX:
                self.log.error("the host is not reading; dropping %d queued bytes", len(self.outbox))
                self.outbox = bytearray()
            self.outbox += data
        self._flush()

    def _flush(self):
        if self._hold_until is not None and self.clock() < self._hold_until:
            return
        while self.outbox and self.connected and self.port is not None:
            try:
                n = self.port.write(bytes(self.outbox[:65536]))
            except PortGone as err:
                self._port_gone(err)
                return
            if not n:
                return
            del self.outbox[:n]

    # ------------------------------------------------------------ data

    def _on_snapshot(self, snap):
        """Publish a snapshot, answer the watchers, then persist it (in that order).

        The cache is written after the watchers are answered (its fsync is the slowest step)
        but before this returns, i.e. before the next snapshot is processed: at most one
        publication is ever ahead of the cache (start() relies on it).  Hooks come last.
        """
        self.stats["snapshots"] += 1
        now = self.wall()
        t0 = self.clock()
        prev = self.record
        if prev is None or not prev.same_data(snap):
            self.seq += 1
            record = Record(self.seq, snap.host_id, snap.generation, dict(snap.values), now,
                            False, self.connected)
            self.record = record
            self.history.add(self.seq, record.values)
            self._publish(cleanup=False)
            self._check_watchers()
            t1 = self.clock()
            self._save_cache(record)
            t2 = self.clock()
            self.publisher.cleanup()
            changed = changed_keys(prev.values if prev is not None else {}, record.values)
            host_changed = prev is None or prev.host_id != snap.host_id
            self.hooks.submit(self.seq, changed, host_changed, snap.host_id, "change")
            self._confirmed = True
            self.log.info("seq %d: host %r generation %d, %d keys, changed: %s%s "
                          "(parsed in %.1f ms, published and watchers answered in %.1f ms, "
                          "cached in %.1f ms)", self.seq,
                          snap.host_id, snap.generation, len(snap.values),
                          " ".join(changed[:20]) or "-", " ..." if len(changed) > 20 else "",
                          (t0 - (self._fed_at or t0)) * 1000, (t1 - t0) * 1000, (t2 - t1) * 1000)
            if host_changed and prev is not None:
                self.log.info("host changed from %r to %r", prev.host_id, snap.host_id)
        else:
            gen_changed = prev.generation != snap.generation
            self.record = prev.copy(generation=snap.generation, received_at=now, stale=False,
                                    connected=self.connected)
            self._publish()
            if gen_changed:
                self._save_cache(self.record)
            if not self._confirmed:      # first confirmation of the cached data: hooks run once
                self._confirmed = True
                self.hooks.submit(self.seq, [], False, snap.host_id, "start")

    def _save_cache(self, record, clean=False):
        try:
            cache.save(self.cfg.state_dir, record, clean=clean)
        except OSError as err:
            self.log.error("cannot write the cache in %s: %s", self.cfg.state_dir, err)

    def _publish(self, cleanup=True):
        """Publish ``self.record``; ``cleanup=False`` leaves old snapshot dirs for
        ``publisher.cleanup()`` (off the path to the watchers)."""
        if self.record is None:
            return
        try:
            self.publisher.publish(self.record, cleanup=cleanup)
        except (OSError, protocol.ProtocolError) as err:
            self.log.error("cannot publish seq %d in %s: %s; retrying in 5 s",
                           self.record.seq, self.cfg.run_dir, err)
            self._publish_retry_at = self.clock() + 5.0
            return
        self.stats["publications"] += 1
        self._publish_retry_at = None

    # ------------------------------------------------------------ control requests

    def _handle_request(self, client, req):
        op = req.get("op")
        if op == "status":
            return self._status()
        if op == "ping":
            return {"ok": True, "op": "pong"}
        if op == "get":
            return self._get(client, req)
        if op == "watch":
            return self._watch(client, req)
        return error_reply("unknown-op", "unknown op %r (status, get, watch, ping)" % str(op)[:32])

    def _status(self):
        state = "waiting-for-port" if self.port is None else (
            "connected" if self.connected else "disconnected")
        reply = {"ok": True, "pid": os.getpid(), "version": VERSION, "state": state,
                 "port": self.port.path if self.port is not None else None,
                 "connected": self.connected, "in_sync": self.connected and self._sync_token is None,
                 "seq": self.seq, "published": self.record is not None, "run_dir": self.cfg.run_dir,
                 "stats": dict(self.stats)}
        if self.record is not None:
            reply.update(host_id=self.record.host_id, generation=self.record.generation,
                         stale=self.record.stale, received_at=self.record.received_at,
                         keys=len(self.record.values))
        return reply

    def _get(self, client, req):
        try:
            key = protocol.validate_key(req.get("key"))
        except protocol.ProtocolError as err:
            return error_reply("bad-key", str(err))
        if not req.get("live"):
            if self.record is None:
                return error_reply("no-data", "no data received from the host yet")
            if key not in self.record.values:
                return error_reply("not-found", "no key %s" % key, seq=self.seq)
            return {"ok": True, "key": key, "value": self.record.values[key], "seq": self.seq,
                    "stale": self.record.stale, "host_id": self.record.host_id}
        timeout = req.get("timeout", DEFAULT_LIVE_TIMEOUT)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout <= 300:
            return error_reply("bad-request", "timeout must be a number of seconds in (0, 300]")
        if not self.connected:
            return error_reply("not-connected", "the host is not connected")
        if len(self.live_queue) + len(self.live_inflight) >= MAX_LIVE_REQUESTS:
            return error_reply("busy", "too many live requests in flight")
        now = self.clock()
        self.live_queue.append(_LiveGet(client, key, now + timeout, now))
        self._send_live_queue()
        return None

    def _send_live_queue(self):
        if not self.connected or self._sync_token is not None:
            return
        for g in self.live_queue:
            req_id = self.session.request("get", key=g.key)
            self.live_inflight[req_id] = g
        self.live_queue = []
        self._send()

    def _requeue_inflight(self):
        if self.live_inflight:
            self.live_queue.extend(self.live_inflight.values())
            self.live_inflight = {}

    def _on_reply(self, frame):
        req_id = frame.get("id")
        g = self.live_inflight.pop(req_id, None) if isinstance(req_id, int) else None
        if g is None:
            if frame.get("op") == "hello":
                self.host_version = frame.get("version")
                self.log.info("host speaks protocol version %s (server %r)",
                              frame.get("version"), str(frame.get("server"))[:64])
            elif frame.get("op") == "error":
                self.log.warning("host reported an error: %s: %s", str(frame.get("code"))[:40],
                                 str(frame.get("message"))[:200])
            return
        rtt = self.clock() - g.started
        if frame.get("op") == "value" and isinstance(frame.get("value"), str):
            g.client.reply({"ok": True, "key": g.key, "value": frame["value"],
                            "host_id": frame.get("host_id"), "generation": frame.get("generation"),
                            "live": True, "rtt": rtt})
        elif frame.get("op") == "error":
            code = frame.get("code") if isinstance(frame.get("code"), str) else "error"
            g.client.reply(error_reply(code[:40], str(frame.get("message"))[:200], rtt=rtt))
        else:
            g.client.reply(error_reply("bad-reply", "unexpected reply from the host"))
        self.control.flush(g.client)

    def _fail_live(self, items, code, message):
        for g in items:
            g.client.reply(error_reply(code, message))

    def _watch(self, client, req):
        since = req.get("since")
        if since is None:
            since = self.seq
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
        watcher = _Watcher(client, since, key, None if timeout is None else self.clock() + timeout)
        if self._watch_ready(watcher):
            return self._watch_reply(watcher)
        self.watchers.append(watcher)
        return None

    def _watch_ready(self, w):
        if self.record is None or w.since == self.seq:
            return False
        if w.key is None:
            return True
        known, old = self.history.value_at(w.key, w.since)
        return not known or old != self.record.values.get(w.key)

    def _watch_reply(self, w):
        reply = {"ok": True, "seq": self.seq, "since": w.since, "snapshot": self.record.to_json()}
        if w.key is not None:
            reply.update(key=w.key, present=w.key in self.record.values,
                         value=self.record.values.get(w.key))
        return reply

    def _check_watchers(self):
        ready = [w for w in self.watchers if self._watch_ready(w)]
        for w in ready:
            self.watchers.remove(w)
            w.client.reply(self._watch_reply(w))      # sent at once (see ControlClient.reply)
        for w in ready:
            self.control.flush(w.client)              # pipelined requests of these clients

    def _client_closed(self, client):
        self.watchers = [w for w in self.watchers if w.client is not client]
        self.live_queue = [g for g in self.live_queue if g.client is not client]
        for req_id, g in list(self.live_inflight.items()):
            if g.client is client:
                del self.live_inflight[req_id]
