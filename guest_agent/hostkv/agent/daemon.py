"""The agent's loop: it only wires the owners together and sleeps until the kernel wakes it.

Owners (each piece of state has one):
  link.Link              the port, the protocol session (sync token, retries, request ids),
                         the outbox and the LinkState (NO_PORT/DISCONNECTED/SYNCING/IN_SYNC)
  store.Store            the published Record, seq and History; the run dir and the cache
  requests.LocalRequests status/get/watch/ping, the watchers and live gets, their timeouts
  control.ControlServer  the control socket's connections
  hooks.HookRunner       the hook thread
Nothing calls up: each returns what happened, and :class:`Agent` hands it on.

Waiting is one epoll object for the agent's life: the port edge-triggered (the kernel reports
every connect/disconnect edge and every arrival, port.py), the uevent socket while there is no
port, the control socket and its clients, and a wake-up pipe (signals, ``stop()``).  The
timeout is the nearest deadline somebody asked for - a watch or live-get timeout, the
session's sync retry, a publication retry - and infinite when there is none: a host that is
away, or connected with nothing changing, costs no wakeups at all.

A snapshot goes: bytes read -> parsed (link) -> published, ``current`` swapped (store.apply) ->
watchers answered (requests.on_change) -> History, cache fsync, old dirs (store.persist) ->
hooks; the time of each step is kept for ``hostkv status --json`` (``timings``).  Python's
automatic garbage collection is off while the loop runs (a collection could land on that path);
the loop collects after each publication and each closed control client instead.
"""

import errno
import gc
import os
import select
import signal
import threading
import time

from hostkv import protocol
from hostkv.agent import VERSION, log
from hostkv.agent.control import ClientClosed, ControlServer
from hostkv.agent.hooks import HookRunner
from hostkv.agent.link import Link, LinkChanged, SnapshotArrived
from hostkv.agent.port import PortLocator
from hostkv.agent.requests import LocalRequests
from hostkv.agent.store import Store

_EPOLL_BITS = ((select.POLLIN, select.EPOLLIN), (select.POLLOUT, select.EPOLLOUT))


def _epoll_mask(events, edge):
    mask = 0
    for poll_bit, epoll_bit in _EPOLL_BITS:
        if events & poll_bit:
            mask |= epoll_bit
    return mask | (select.EPOLLET if edge else 0)


class Agent(object):
    """The guest agent.  ``run()`` blocks until ``stop()`` (or SIGTERM/SIGINT in the main thread)."""

    def __init__(self, cfg, locator=None, clock=time.monotonic, wall=time.time, hotplug=None):
        self.cfg = cfg
        self.log = log.get_logger()
        self.clock = clock
        locator = locator or PortLocator(cfg.port_name, device=cfg.device, dev_dir=cfg.dev_dir,
                                         sysfs_dir=cfg.sysfs_dir, node_dir=cfg.run_dir)
        session = protocol.GuestSession(agent_name="hostkv-agent/" + VERSION,
                                        sync_timeout=cfg.sync_timeout,
                                        resync_interval=cfg.resync_interval or None, clock=clock)
        self.link = Link(locator, session, clock, rescan_interval=cfg.rescan_interval, hotplug=hotplug)
        self.store = Store(cfg.run_dir, cfg.state_dir, wall, clock)
        self.requests = LocalRequests(self.store, self.link, clock, wall)
        self.control = ControlServer(cfg.socket)
        self.hooks = HookRunner(cfg.hooks_dir, cfg.run_dir, cfg.hook_timeout)
        self._stop = False
        self._resync_requested = False
        self._epoll = None
        self._registered = {}        # fd -> epoll mask
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self.started = threading.Event()    # set once the socket is listening (tests)
        self.wakeups = 0                    # returns from epoll.poll() (tests, status)

    # ------------------------------------------------------------ views (status, tests)

    @property
    def stats(self):
        return dict(self.link.stats, **self.store.stats)

    @property
    def watchers(self):
        return self.requests.watchers

    # ------------------------------------------------------------ life cycle

    def start(self):
        """Restore the cache (published stale), open the control socket, start the hooks thread."""
        self.store.restore()
        self.control.open()
        self.hooks.start()
        self._epoll = select.epoll()
        self._watch({self._wake_r: (select.EPOLLIN, None)})
        self.started.set()

    def stop(self):
        """Ask the loop to end (thread-safe)."""
        self._stop = True
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
            # no automatic collection in the middle of a snapshot's way to the readers: the
            # loop collects itself, after each publication and each closed client (only when
            # the agent is the process: in a thread it must not change its host's GC)
            if in_main:
                gc.disable()
            self.log.info("hostkv-agent %s running; port %s, publishing to %s",
                          VERSION, self.cfg.device or self.cfg.port_name, self.cfg.run_dir)
            self._on_link(self.link.start(self.clock()))
            while not self._stop:
                self._iterate()
        finally:
            if in_main:
                gc.enable()
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
        if self.started.is_set():
            self.requests.shutdown()
            self.control.flush_all()
            self._on_link(self.link.close(self.clock()))
            self.store.close()
            self.control.close()
            self.hooks.stop()
        if self._epoll is not None:
            self._epoll.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    # ------------------------------------------------------------ the loop

    def _iterate(self):
        now = self.clock()
        if self._resync_requested:
            self._resync_requested = False
            self._on_link(self.link.resync(now))
        self._on_link(self.link.tick(now))
        self._resume(self.requests.tick(now))
        self.store.tick(now)
        wanted = {self._wake_r: (select.EPOLLIN, None)}
        link_fds = self.link.watched()
        for fd, (events, edge, owner) in link_fds.items():
            wanted[fd] = (_epoll_mask(events, edge), owner)
        for fd, (events, owner) in self.control.watched().items():
            wanted[fd] = (_epoll_mask(events, False), owner)
        self._watch(wanted)
        deadlines = [d for d in (self.link.next_deadline(), self.requests.next_deadline(),
                                 self.store.next_deadline()) if d is not None]
        timeout = max(0.0, min(deadlines) - self.clock()) if deadlines else -1
        try:
            ready = self._epoll.poll(timeout)
        except (OSError, IOError) as err:          # EINTR before Python 3.5's automatic retry
            if err.errno == errno.EINTR:
                return
            raise
        self.wakeups += 1
        now = self.clock()
        if len(ready) > 1:
            ready.sort(key=lambda item: item[0] not in link_fds)
        for fd, revents in ready:
            if fd in link_fds:                     # first: the port (the path to the readers)
                self._on_link(self.link.handle(fd, revents, now))
            elif fd == self._wake_r:
                try:
                    while os.read(self._wake_r, 512):
                        pass
                except OSError:
                    pass
            elif self.control.owns(fd):
                self._on_control(self.control.on_event(fd, revents), now)

    def _watch(self, wanted):
        """Make the epoll set ``wanted`` ({fd: (mask, owner)}), touching only what changed.

        epoll registers open files, not numbers: a closed fd leaves the set by itself and its
        number may come back for another file, hence the owner object in each entry."""
        for fd in [fd for fd in self._registered if fd not in wanted]:
            self._forget(fd)
        for fd, (mask, owner) in wanted.items():
            old = self._registered.get(fd)
            if old is not None and old[1] is owner:
                if old[0] != mask:
                    self._epoll.modify(fd, mask)
                    self._registered[fd] = (mask, owner)
                continue
            if old is not None:
                self._forget(fd)
            self._epoll.register(fd, mask)
            self._registered[fd] = (mask, owner)

    def _forget(self, fd):
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass                                  # already closed: closing removed it
        del self._registered[fd]

    # ------------------------------------------------------------ wiring

    def _on_link(self, events):
        for event in events:
            if isinstance(event, SnapshotArrived):
                self._on_snapshot(event)
            elif isinstance(event, LinkChanged):
                self.store.link_changed(event.connected)
                self._resume(self.requests.link_changed(event))
            else:                                  # a reply to one of our live gets
                self._resume(self.requests.on_reply(event, self.clock()))

    def _on_snapshot(self, event):
        change = self.store.apply(event.snapshot, self.link.connected)
        t = change.timings
        t.update(read_at=event.read_at, parsed_at=event.parsed_at, swapped_at=self.clock())
        if not change.new_data:
            self.store.persist(change)
            if change.first_confirmation:      # first confirmation of the cached data: hooks run once
                self.hooks.submit(change.record.seq, [], False, change.record.host_id, "start")
            return
        answered = self.requests.on_change(change)
        t["answered_at"] = self.clock()
        self.store.persist(change)
        t["cached_at"] = self.clock()
        changed, host_changed = change.changed()
        record = change.record
        self.hooks.submit(record.seq, changed, host_changed, record.host_id, "change")
        t["hooks_at"] = self.clock()
        self._resume(answered)
        gc.collect()
        self.log.info("seq %d: host %r generation %d, %d keys, changed: %s%s (bytes -> parsed %.1f ms, "
                      "swapped %.1f ms, watchers answered %.1f ms, cached %.1f ms)",
                      record.seq, record.host_id, record.generation, len(record.values),
                      " ".join(changed[:20]) or "-", " ..." if len(changed) > 20 else "",
                      (t["parsed_at"] - t["read_at"]) * 1000, (t["swapped_at"] - t["read_at"]) * 1000,
                      (t["answered_at"] - t["read_at"]) * 1000, (t["cached_at"] - t["read_at"]) * 1000)
        if host_changed and change.prev is not None:
            self.log.info("host changed from %r to %r", change.prev.host_id, record.host_id)

    def _on_control(self, events, now):
        queue = list(events)
        while queue:
            event = queue.pop(0)
            if isinstance(event, ClientClosed):
                self.requests.client_closed(event.client)
                gc.collect()                       # (automatic collection is off, see run())
                continue
            reply = self.requests.handle(event.client, event.request, now)
            if reply is not None:
                event.client.reply(reply)
                queue.extend(self.control.resume(event.client))

    def _resume(self, clients):
        """Clients that were just answered go on with their pipelined requests."""
        for client in clients:
            self._on_control(self.control.resume(client), self.clock())
