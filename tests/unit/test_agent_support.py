"""Fakes for the agent's fast unit tests (no tests here).

A :class:`FakeLink` stands in for the virtio-serial port: the agent's real
:class:`hostkv.agent.port.Port` code runs on a socket whose kernel semantics match the
port's in each state (host away: a socket whose peer is closed gives POLLIN|POLLHUP and
read() == 0, level-triggered; host connected: a live socketpair).  Connect/disconnect on
the same fd are emulated by dup2()ing the next state's socket over the agent's fd, inside
the agent's thread, on its next probe/read/write.

The kernel's wake-ups on every edge (port.py: the agent watches a virtio port edge-triggered
and never probes it on a timer) are emulated with an epoll object per port, the fd the agent
waits on (``FakePort.fileno()``): it watches the current state's socket, so data and hang-ups
wake the agent, and a state change re-registers it there, which wakes the agent at once (an
epoll fd is readable while it has ready events; EPOLLET on it reports each new wake-up).
``wakes=False`` gives a port without those wake-ups (the agent's fallback: a backoff probe).

:class:`FakeHost` speaks the real ``hostkv.protocol.HostSession`` on the host end.  The real
in-guest test (QEMU) is elsewhere; this is the fast one.
"""

import functools
import os
import select
import socket
import threading

from hostkv import protocol
from hostkv.agent import client, config
from hostkv.agent.daemon import Agent
from hostkv.agent.publish import read_current
from hostkv.agent.port import Port, PortGone
from tests.harness import waiting


wait_for = functools.partial(waiting.wait_for, interval=0.01)   # in-process rigs: poll fast


def _hang_up(sock):
    """Close the host end so the guest end sees HUP even while a thread is in recv() on it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _dead_socket():
    a, b = socket.socketpair()
    b.close()
    a.setblocking(False)
    return a


class FakeLink(object):
    """The port's state as the test controls it; thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.state_sock = _dead_socket()     # what the agent's fd should be
        self.swap_pending = False
        self.unplugged = False
        self.host_sock = None
        self.probes = 0
        self.generation = 0
        self.ports = []                      # FakePorts open on this link

    def set_state(self, sock):
        with self.lock:
            old_host = self.host_sock
            self.state_sock = sock
            self.swap_pending = True
            self.generation += 1
            for port in self.ports:
                port.follow(sock)
        return old_host

    def connect(self):
        """The host side connects: returns the host's socket (blocking)."""
        guest, host = socket.socketpair()
        guest.setblocking(False)
        old = self.set_state(guest)
        with self.lock:
            self.host_sock = host
        if old is not None:
            _hang_up(old)
        return host

    def disconnect(self):
        old = self.set_state(_dead_socket())
        with self.lock:
            self.host_sock = None
        if old is not None:
            _hang_up(old)         # wakes an agent blocked in poll on the old socket

    def unplug(self):
        with self.lock:
            self.unplugged = True
            old, self.host_sock = self.host_sock, None
            self._bell = _dead_socket()          # always ready: rings every port's epoll
            for port in self.ports:
                port.follow(self._bell)
        if old is not None:
            _hang_up(old)

    def replug(self):
        with self.lock:
            self.unplugged = False
            self.state_sock = _dead_socket()
            self.swap_pending = False


class FakePort(Port):
    def __init__(self, link, wakes=True):
        self.bell = select.epoll()
        self._watching = None
        with link.lock:
            fd = os.dup(link.state_sock.fileno())
            self.link_generation = link.generation
            self.follow(link.state_sock)
            link.ports.append(self)
        Port.__init__(self, fd, "fake-vport0p1", wakes=wakes)
        self.link = link

    def follow(self, sock):
        """Watch ``sock`` (the link's new state) in the epoll the agent waits on."""
        if self._watching is not None:
            try:
                self.bell.unregister(self._watching)
            except (OSError, ValueError):
                pass
        self._watching = sock.fileno()
        self.bell.register(self._watching, select.EPOLLIN | select.EPOLLOUT)

    def fileno(self):
        return self.bell.fileno() if self.wakes else self.fd

    def close(self):
        with self.link.lock:
            if self in self.link.ports:
                self.link.ports.remove(self)
        Port.close(self)
        self.bell.close()

    def _apply(self):
        link = self.link
        with link.lock:
            if link.unplugged:
                raise PortGone("fake port unplugged")
            if link.generation != self.link_generation:
                os.dup2(link.state_sock.fileno(), self.fd)
                self.link_generation = link.generation

    def probe(self):
        self.link.probes += 1
        self._apply()
        return Port.probe(self)

    def read(self, size=65536):
        self._apply()
        return Port.read(self, size)

    def write(self, data):
        self._apply()
        return Port.write(self, data)


class FakeLocator(object):
    """Stands in for PortLocator: the port exists unless the link is unplugged."""

    def __init__(self, link, wakes=True):
        self.link = link
        self.wakes = wakes
        self.last_reason = None
        self.locates = 0

    def locate(self):
        self.locates += 1
        with self.link.lock:
            if self.link.unplugged:
                self.last_reason = "fake port unplugged"
                return None
        return FakePort(self.link, self.wakes)


class FakeHotplug(object):
    """Stands in for HotplugWatcher: no uevents (the agent looks for the port on a timer)."""

    sock = None

    def open(self):
        return False

    def close(self):
        pass


class UncheckedHostSession(protocol.HostSession):
    """A broken (or older) host: pushes its snapshot without checking it against the limits."""

    def push(self):
        self._out.append(protocol.encode(self._get_snapshot().to_frame(), protocol.MAX_SNAPSHOT_BYTES))


class FakeHost(object):
    """The host service: a real HostSession on the host end of the link."""

    def __init__(self, link, host_id="hv1", values=None, generation=1):
        self.link = link
        self.snapshot = protocol.Snapshot(host_id, generation, dict(values or {}))
        self.session = protocol.HostSession(lambda: self.snapshot)
        self.lock = threading.Lock()
        self.sock = None
        self.received = []           # decoded guest frames
        self.answer = True           # False: read but never reply (a wedged host)
        self._thread = None

    def connect(self):
        sock = self.link.connect()
        with self.lock:
            self.sock = sock
            self.session.connect()
            sock.sendall(self.session.data_to_send())
        self._thread = threading.Thread(target=self._reader, args=(sock,))
        self._thread.daemon = True
        self._thread.start()

    def disconnect(self):
        with self.lock:
            self.sock = None
        self.link.disconnect()

    def _reader(self, sock):
        lines = protocol.LineBuffer(protocol.MAX_GUEST_FRAME_BYTES)
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            for line in lines.feed(data):
                if isinstance(line, bytes) and line.strip():
                    try:
                        self.received.append(protocol.decode(line, protocol.MAX_GUEST_FRAME_BYTES))
                    except protocol.ProtocolError:
                        pass
            if not self.answer:
                continue
            with self.lock:
                self.session.receive(data)
                reply = self.session.data_to_send()
                if reply and self.sock is sock:
                    try:
                        sock.sendall(reply)
                    except OSError:
                        return

    def set(self, host_id=None, values=None, generation=None, push=True):
        old = self.snapshot
        self.snapshot = protocol.Snapshot(host_id if host_id is not None else old.host_id,
                                          generation if generation is not None else old.generation + 1,
                                          dict(values) if values is not None else dict(old.values))
        if push:
            self.push()

    def push(self):
        with self.lock:
            self.session.push()
            data = self.session.data_to_send()
        self.send(data)

    def send(self, data):
        with self.lock:
            if self.sock is not None:
                self.sock.sendall(data)

    def ops(self, op):
        return [f for f in list(self.received) if f.get("op") == op]


HOOK = """#!/bin/sh
printf '%s|%s|%s|%s\\n' "$HOSTKV_SEQ" "$HOSTKV_CHANGED" "$HOSTKV_HOST_CHANGED" "$HOSTKV_HOST_ID" >> {out}
printf '%s\\n' "$HOSTKV_REASON" >> {out}.reason
"""


class Rig(object):
    """Agent thread + fake link + fake host sharing temp dirs; restartable."""

    def __init__(self, tmp_path, wakes=True, **cfg):
        self.tmp = tmp_path
        self.run_dir = str(tmp_path / "run")
        self.state_dir = str(tmp_path / "state")
        self.hooks_dir = str(tmp_path / "hooks.d")
        os.makedirs(self.hooks_dir, exist_ok=True)
        self.cfg_kw = dict(run_dir=self.run_dir, state_dir=self.state_dir, hooks_dir=self.hooks_dir,
                           sync_timeout=0.5, hook_timeout=5.0)
        self.cfg_kw.update(cfg)
        self.link = FakeLink()
        self.locator = FakeLocator(self.link, wakes)
        self.host = FakeHost(self.link, "hv1", {"host.hostname": "hv1.example", "vm.role": "db"})
        self.agent = None
        self.thread = None
        self.errors = []

    def start(self):
        self.agent = Agent(config.Config(**self.cfg_kw), locator=self.locator, hotplug=FakeHotplug())
        self.thread = threading.Thread(target=self._run)
        self.thread.daemon = True
        self.thread.start()
        assert self.agent.started.wait(5), "agent did not start"

    def _run(self):
        try:
            self.agent.run()
        except BaseException as err:      # noqa: BLE001 - surfaced by stop()
            self.errors.append(err)

    def stop(self):
        if self.agent is not None:
            self.agent.stop()
            self.thread.join(10)
            assert not self.thread.is_alive(), "agent thread did not stop"
            assert self.errors == []
            self.agent = None

    def published(self):
        try:
            return read_current(self.run_dir)
        except Exception:
            return None

    def wait_published(self, pred, what, timeout=5.0):
        return wait_for(lambda: (lambda d: d if d is not None and pred(d) else None)(self.published()),
                        timeout, what=what)

    def ask(self, req, timeout=10.0):
        return client.request(self.agent.cfg.socket, req, timeout)

    def add_hook(self, name="10-record"):
        out = self.tmp / ("%s.out" % name)
        path = os.path.join(self.hooks_dir, name)
        with open(path, "w") as f:
            f.write(HOOK.format(out=out))
        os.chmod(path, 0o755)
        return out
