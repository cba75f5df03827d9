"""Channel source: the running libvirt domains that have the hostkv channel.

``LibvirtSource(uri).run(daemon)`` (runs until cancelled):

  * registers libvirt's event loop on hostkvd's asyncio loop (``libvirtaio``) before it opens the
    connection, so libvirt events and keepalives are handled on the daemon's own loop; every libvirt
    call is made from that loop's thread (libvirtaio is not thread-safe);
  * opens ``uri`` read-only, enumerates the running domains and follows lifecycle,
    metadata-change and device-added/removed events;
  * the host id is libvirt's host UUID (unless ``set_host_id`` is False, i.e. the operator gave
    one).  ``getCapabilities()`` can take seconds (QEMU capability probing: 7.6-8.2 s were seen),
    and libvirt calls are synchronous on our loop, so it is never called there: a child process
    asks for it (:func:`host_uuid_child`) while the loop keeps serving.  The answer is cached in
    ``state_dir`` (hostkvd: ``--state-dir``, else systemd's ``$STATE_DIRECTORY``), so after a
    restart or reconnect the channels are served at once with the cached id, checked in the
    background (a different answer re-pushes).  Only the very first start without a cache waits
    for the answer before serving domains (never a made-up id that would then flip);
  * for each domain it "refreshes": reads the LIVE XML (the channel socket path changes on every
    start, restore and migration), and if the domain has a unix channel named ``port_name`` calls
    ``daemon.add_channel(uuid, path, vm_values, label=name)`` and ``daemon.set_vm_values``;
    otherwise (no channel, not running, gone) ``daemon.remove_channel(uuid)``.  A domain without
    the channel is never touched;
  * vm.* values come from the domain metadata (namespace domain_xml.NS; local keys over key-source
    keys), handed over with the whole :class:`domain_xml.HostkvMetadata` (privacy policy, links)
    as ``meta``; bad entries are logged and left out, the rest is served;
  * when the connection closes (libvirtd restarted, died, or stopped answering keepalives) it
    reconnects with backoff, then re-enumerates and re-registers.  Channels stay connected
    meanwhile: they only depend on QEMU.  Before each (re)connect a child process checks that
    libvirtd answers at all (:func:`probe`), so a hung libvirtd cannot stall the loop in ``open``;
    for a local URI whose daemon socket does not accept a connection at all (libvirtd stopped) the
    probe is skipped (:func:`socket_refuses`): a long outage costs no child process per retry;
  * an outage is logged once when it starts (WARNING) and once when it ends (INFO, with its
    length); the retries in between log at DEBUG only.  The connection's state ("up", "down" with
    since/why, "connecting") and every domain whose channel cannot be served (and why) are handed
    to ``daemon.set_source_status`` for ``hostkvctl status`` and systemd's STATUS= line.

Channel keys are the domain UUID strings, labels the domain names.
"""

import asyncio
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
import xml.etree.ElementTree as ET

from hostkv import protocol
from hostkv.common import atomic, domain_xml, paths
from hostkv.hostkvd.timeout import within

log = logging.getLogger("hostkvd.libvirt")

_event_impl = None
STABLE_SECONDS = 10.0   # a connection that lived this long resets the reconnect backoff
PROBE_TIMEOUT = 10.0    # a libvirtd that does not answer an open within this is "not answering"

# Run in a child process before every (re)connect: libvirt calls are synchronous on our loop, and
# a libvirtd that accepts the socket but never answers (hung, SIGSTOPped) would otherwise stall
# every guest channel for as long as it hangs.
_PROBE = """
import sys, libvirt
libvirt.registerErrorHandler(lambda c, e: None, None)
try:
    libvirt.openReadOnly(sys.argv[1]).close()
except libvirt.libvirtError as err:
    sys.stderr.write(err.get_error_message() or "error")
    sys.exit(1)
"""


def probe(uri, timeout=PROBE_TIMEOUT):
    """None if libvirt at ``uri`` answers an open within ``timeout`` s, else why not (blocking)."""
    try:
        res = subprocess.run([sys.executable, "-c", _PROBE, uri], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "libvirt did not answer within %.0f s (hung?)" % timeout
    except OSError as err:
        return "cannot run the libvirt probe: %s" % err
    if res.returncode != 0:
        return res.stderr.decode("utf-8", "replace").strip()[:300] or "probe failed (%d)" % res.returncode
    return None


LEGACY_SOCKET = "/run/libvirt/libvirt-sock"      # libvirtd's (EL8), or virtproxyd's (EL9)


def local_sockets(uri):
    """The unix socket paths a local ``qemu://``/``qemu+unix://`` system URI may use (libvirt's
    remote driver: ``?socket=``, else the modular virtqemud's socket, else libvirtd's), or None
    when the URI is not one of those (then nothing is assumed and the probe always runs)."""
    try:
        parsed = urllib.parse.urlsplit(uri)
    except ValueError:
        return None
    if parsed.scheme not in ("qemu", "qemu+unix") or parsed.netloc:
        return None
    query = urllib.parse.parse_qs(parsed.query)
    if query.get("socket"):
        return [query["socket"][0]]
    if parsed.path != "/system":
        return None
    # libvirt's remote driver: the modular daemon's socket when it exists, else libvirtd's
    modular = "/run/libvirt/virtqemud-sock"
    return [modular] if os.path.exists(modular) else [LEGACY_SOCKET]


def socket_refuses(uri):
    """True when no daemon socket of local ``uri`` accepts a connection (libvirt is down for sure:
    no probe needed); False when one accepts or the URI's sockets are not known."""
    paths_ = local_sockets(uri)
    if not paths_:
        return False
    for path in paths_:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
            # EL9's modular layout with virtqemud (and its socket) gone: the legacy socket is
            # virtproxyd's, which can only forward to the missing virtqemud-sock: down for sure
            return path == LEGACY_SOCKET and _peer_command(sock) == "virtproxyd"
        except BlockingIOError:     # the backlog is full: something is listening
            return False
        except OSError:
            continue
        finally:
            sock.close()
    return True


def _peer_command(sock):
    """The command name of the process listening on connected unix socket ``sock`` (or None)."""
    try:
        pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                  struct.calcsize("3i")))[0]
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except (OSError, struct.error):
        return None


_HOST_UUID = """
import sys, libvirt
libvirt.registerErrorHandler(lambda c, e: None, None)
try:
    conn = libvirt.openReadOnly(sys.argv[1])
    sys.stdout.write(conn.getCapabilities())
    conn.close()
except libvirt.libvirtError as err:
    sys.stderr.write(err.get_error_message() or "error")
    sys.exit(1)
"""
HOST_ID_TIMEOUT = 300.0
HOST_ID_CACHE = "libvirt-host-id.json"


def host_uuid_child(uri, timeout=HOST_ID_TIMEOUT):
    """``(uuid, None)`` from libvirt's capabilities, asked in a child process, or ``(None, why)``
    (blocking: run it in an executor thread; no libvirt call happens in that thread)."""
    try:
        res = subprocess.run([sys.executable, "-c", _HOST_UUID, uri], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "getCapabilities() did not answer within %.0f s" % timeout
    except OSError as err:
        return None, "cannot run the capabilities child: %s" % err
    if res.returncode != 0:
        return None, res.stderr.decode("utf-8", "replace").strip()[:300] or "failed (%d)" % res.returncode
    uuid = host_uuid_from_capabilities(res.stdout.decode("utf-8", "replace"))
    return (uuid, None) if uuid else (None, "no /capabilities/host/uuid")


def ensure_event_impl(loop=None):
    """Register libvirtaio as libvirt's event implementation on ``loop`` (once per process).

    Must run before the first connection is opened.  Returns the implementation object.
    """
    global _event_impl
    if _event_impl is None:
        import libvirtaio
        _event_impl = libvirtaio.virEventRegisterAsyncIOImpl(loop=loop or asyncio.get_event_loop())
    return _event_impl


def host_uuid_from_capabilities(caps_xml):
    """``/capabilities/host/uuid`` or None."""
    try:
        root = ET.fromstring(caps_xml)
    except ET.ParseError:
        return None
    text = root.findtext("./host/uuid")
    return text.strip() if text and text.strip() else None


class LibvirtSource(object):
    """Serves the hostkv channel of every running libvirt domain that has one (module docstring)."""

    def __init__(self, uri=paths.LIBVIRT_URI, port_name=protocol.DEFAULT_PORT_NAME, set_host_id=True,
                 backoff_min=0.2, backoff_max=5.0, probe_timeout=PROBE_TIMEOUT, state_dir=None):
        self.uri = uri
        self.state_dir = state_dir   # where the libvirt host id is cached (None: no cache)
        self._host_id_ready = None   # asyncio.Event: refreshes wait for it (see the module doc)
        self._host_id_task = None
        self.probe_timeout = probe_timeout   # 0/None: no probe before connecting
        self.port_name = port_name
        self.set_host_id = set_host_id
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.conn = None
        self.served = {}          # uuid -> domain name, the channels this source added
        self.problems = {}        # uuid -> last reported problem (logged once per change)
        self.generation = 0       # bumped on every (re)connect; tests/status read it
        self._daemon = None
        self._closed = None
        self._callback_ids = []
        self._pending = {}        # uuid -> refresh task
        self._dirty = set()
        self.state = "connecting"  # "up" | "down" | "connecting"
        self.since = time.time()  # when the state began (wall clock)
        self.why = None           # the reason of a "down"
        self.unusable = {}        # uuid -> (domain name, why its channel cannot be served)

    # ------------------------------------------------------------ main loop
    async def run(self, daemon):
        import libvirt
        self._daemon = daemon
        self._host_id_ready = asyncio.Event()
        if not self.set_host_id:
            self._host_id_ready.set()
        else:
            cached = self._cached_host_id()
            if cached:
                log.info("libvirt %s: host id %s (cached; checked once connected)", self.uri, cached)
                self._daemon.set_host_id(cached)
                self._host_id_ready.set()
        ensure_event_impl(asyncio.get_event_loop())
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors arrive as exceptions
        delay = self.backoff_min
        self._set_state("connecting")
        try:
            while True:
                problem = None
                if socket_refuses(self.uri):
                    problem = "no libvirt daemon accepts connections at %s" % " or ".join(local_sockets(self.uri))
                elif self.probe_timeout:
                    problem = await asyncio.get_event_loop().run_in_executor(
                        None, probe, self.uri, self.probe_timeout)
                if problem is None:
                    try:
                        await self._connect()
                    except libvirt.libvirtError as err:
                        problem = err.get_error_message()
                if problem is not None:
                    if self.state != "down":
                        log.warning("libvirt %s: down (%s); guests already served stay served; "
                                    "retrying quietly", self.uri, problem)
                        self._set_state("down", problem)
                    else:
                        log.debug("libvirt %s: still down (%s); retrying in %.1fs", self.uri, problem, delay)
                        if problem != self.why:
                            self.why = problem
                            self._publish()
                    await asyncio.sleep(delay)
                    delay = min(self.backoff_max, delay * 2)
                    continue
                if self.state == "down":
                    log.info("libvirt %s: up again after %.0f s down", self.uri, time.time() - self.since)
                self._set_state("up")
                connected_at = asyncio.get_event_loop().time()
                await self._closed.wait()
                log.warning("libvirt %s: connection lost; reconnecting (guests stay served)", self.uri)
                self._set_state("down", "connection lost")
                self._drop_connection()
                if asyncio.get_event_loop().time() - connected_at > STABLE_SECONDS:
                    delay = self.backoff_min    # a flapping libvirtd keeps the growing delay
                else:
                    await asyncio.sleep(delay)
                    delay = min(self.backoff_max, delay * 2)
        finally:
            if self._host_id_task is not None:
                self._host_id_task.cancel()
            for task in list(self._pending.values()):
                task.cancel()
            self._drop_connection()
            await self._drain()

    def _set_state(self, state, why=None):
        if state != self.state:
            self.since = time.time()
        self.state, self.why = state, why
        self._publish()

    def status(self):
        """What ``hostkvctl status`` shows about libvirt (JSON-able)."""
        return {"source": "libvirt", "uri": self.uri, "state": self.state, "since": self.since,
                "why": self.why, "unusable": [{"domain": name, "uuid": uuid, "why": why}
                                              for uuid, (name, why) in sorted(self.unusable.items())]}

    def _publish(self):
        setter = getattr(self._daemon, "set_source_status", None)
        if setter is not None:
            setter(self.status())

    @staticmethod
    async def _drain(timeout=2.0):
        """Let libvirt's deferred free callbacks run, so closing the loop leaves no pending task."""
        impl = _event_impl
        if impl is None or not hasattr(impl, "drain"):
            return
        try:
            await within(asyncio.shield(impl.drain()), timeout)
        except asyncio.CancelledError:
            pass

    # ------------------------------------------------------------ host id
    def _cache_path(self):
        return os.path.join(self.state_dir, HOST_ID_CACHE) if self.state_dir else None

    def _cached_host_id(self):
        path = self._cache_path()
        if not path:
            return None
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
            if doc.get("uri") == self.uri:
                return protocol.validate_host_id(doc.get("host_id"))
        except (OSError, ValueError, AttributeError, protocol.ProtocolError):
            pass
        return None

    async def _learn_host_id(self):
        """Ask libvirt for its host UUID off the loop; cache it; hand it to the daemon."""
        try:
            uuid, why = await asyncio.get_event_loop().run_in_executor(None, host_uuid_child, self.uri)
            if uuid is None:
                log.warning("libvirt %s: no host UUID (%s); %s", self.uri, why,
                            "keeping the cached one" if self._host_id_ready.is_set() else "using a derived host id")
                return
            try:
                self._daemon.set_host_id(uuid)
            except protocol.ProtocolError as err:
                log.warning("libvirt %s: unusable host UUID %r: %s", self.uri, uuid[:80], err)
                return
            path = self._cache_path()
            if path and self._cached_host_id() != uuid:
                try:
                    atomic.write_atomic(path, json.dumps({"uri": self.uri, "host_id": uuid}) + "\n",
                                        mode=0o644, makedirs=True)
                except OSError as err:
                    log.warning("cannot cache the host id in %s: %s", path, err)
        finally:
            self._host_id_ready.set()

    async def _connect(self):
        import libvirt
        conn = libvirt.openReadOnly(self.uri)
        # each connection's close callback sets that connection's own event: a late callback of
        # an older connection must not end this one
        self._closed = closed = asyncio.Event()
        try:
            conn.registerCloseCallback(self._on_close, closed)
            try:
                conn.setKeepAlive(5, 3)
            except libvirt.libvirtError:
                pass  # e.g. test:/// has no keepalive
            ids = []
            for event_id, cb in ((libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle),
                                 (libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, self._on_metadata),
                                 (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, self._on_device),
                                 (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, self._on_device)):
                ids.append(conn.domainEventRegisterAny(None, event_id, cb, None))
            self._callback_ids = ids
            self.conn = conn
            if self.set_host_id and (self._host_id_task is None or self._host_id_task.done()):
                self._host_id_task = asyncio.ensure_future(self._learn_host_id())
            running = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        except BaseException:
            self.conn = conn
            self._drop_connection()
            raise
        self.generation += 1
        running_uuids = set(dom.UUIDString() for dom in running)
        # Stopped or migrated away while we were disconnected: the refresh finds them gone.
        for uuid in sorted(running_uuids | set(self.served)):
            self._schedule(uuid)
        log.info("libvirt %s: connected (host %s), %d running domain(s)",
                 self.uri, conn.getHostname(), len(running))

    def _drop_connection(self):
        conn, self.conn = self.conn, None
        if conn is None:
            return
        for cid in self._callback_ids:
            try:
                conn.domainEventDeregisterAny(cid)
            except Exception:   # noqa: BLE001 - the connection may already be dead
                pass
        self._callback_ids = []
        try:
            conn.unregisterCloseCallback()
        except Exception:   # noqa: BLE001
            pass
        try:
            conn.close()
        except Exception:   # noqa: BLE001
            pass

    # ------------------------------------------------------------ libvirt callbacks (loop thread)
    def _on_close(self, _conn, reason, closed):
        """libvirt closed a connection: ``closed`` is the event of the connection it belongs to."""
        current = closed is self._closed
        log.info("libvirt %s: close callback (reason %s)%s", self.uri, reason,
                 "" if current else " of an older connection; ignored")
        closed.set()

    def _on_lifecycle(self, _conn, dom, event, detail, _opaque):
        log.debug("lifecycle %s event=%s detail=%s", dom.name(), event, detail)
        self._schedule(dom.UUIDString())

    def _on_metadata(self, _conn, dom, mtype, nsuri, _opaque):
        import libvirt
        if mtype == libvirt.VIR_DOMAIN_METADATA_ELEMENT and nsuri == domain_xml.NS:
            log.debug("metadata change %s", dom.name())
            self._schedule(dom.UUIDString())

    def _on_device(self, _conn, dom, alias, _opaque):
        log.debug("device %s added or removed in %s", alias, dom.name())
        self._schedule(dom.UUIDString())

    # ------------------------------------------------------------ refresh
    def _schedule(self, uuid):
        """Refresh ``uuid`` soon; coalesces bursts of events into one refresh."""
        if uuid in self._pending:
            log.debug("refresh of %s pending: once more after it", uuid)
            self._dirty.add(uuid)
            return
        self._pending[uuid] = asyncio.ensure_future(self._refresh_task(uuid))

    async def _refresh_task(self, uuid):
        try:
            if self._host_id_ready is not None:
                await self._host_id_ready.wait()    # only the first start without a cache waits
            while True:
                self._dirty.discard(uuid)
                await self.refresh(uuid)
                if uuid not in self._dirty:
                    break
        except asyncio.CancelledError:
            raise
        except Exception:   # noqa: BLE001 - one domain must never stop the source
            log.exception("refreshing domain %s failed", uuid)
        finally:
            self._pending.pop(uuid, None)

    async def idle(self):
        """Wait until no refresh is pending (tests and benchmarks use it)."""
        while self._pending:
            await asyncio.gather(*list(self._pending.values()), return_exceptions=True)

    async def refresh(self, uuid):
        """Bring the daemon's view of domain ``uuid`` in line with libvirt's."""
        import libvirt
        conn = self.conn
        if conn is None:
            return
        try:
            dom = conn.lookupByUUIDString(uuid)
            xml = dom.XMLDesc(0) if dom.isActive() else None
        except libvirt.libvirtError as err:
            if err.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
                await self._remove(uuid, "gone from this host")
                return
            raise
        if xml is None:
            await self._remove(uuid, "not running")
            return
        await self.apply_xml(uuid, xml)

    async def apply_xml(self, uuid, xml):
        """Serve or stop serving domain ``uuid`` according to its LIVE ``xml``."""
        name = domain_xml.domain_identity(xml)[0]
        path, problem = domain_xml.channel_socket_path(xml, self.port_name)
        if (self.unusable.get(uuid) or (None, None))[1] != problem:
            if problem:
                self.unusable[uuid] = (name, problem)
            else:
                self.unusable.pop(uuid, None)
            self._publish()
        if path is None:
            if problem:
                self._report(uuid, "domain %s: %s" % (name, problem))
            await self._remove(uuid, problem or "no %s channel" % self.port_name)
            return
        meta, problems = domain_xml.domain_metadata(xml)
        values = meta.effective()[0]
        self._report(uuid, "; ".join("domain %s: %s" % (name, p) for p in problems) if problems else None)
        if uuid not in self.served:
            log.info("serving domain %s (%s) at %s with %d vm key(s)", name, uuid, path, len(values))
        self.served[uuid] = name
        self._daemon.add_channel(uuid, path, vm_values=values, label=name, meta=meta)

    async def _remove(self, uuid, why):
        if uuid in self.unusable and why in ("not running", "gone from this host"):
            del self.unusable[uuid]
            self._publish()
        if uuid in self.served:
            log.info("no longer serving domain %s (%s): %s", self.served[uuid], uuid, why)
            del self.served[uuid]
            self.problems.pop(uuid, None)
            await self._daemon.remove_channel(uuid)

    def _report(self, uuid, problem):
        if problem and self.problems.get(uuid) != problem:
            log.warning("%s", problem)
        if problem:
            self.problems[uuid] = problem
        else:
            self.problems.pop(uuid, None)
