"""Cobbler as a live key source: edit a system in Cobbler, the running guest sees it.

Off unless hostkvd.conf has a ``[cobbler]`` section with a server::

    [cobbler]
    server = cobbler.example.com    # host, host:port or URL; no path: /cobbler_api (Apache's proxy)
    interval = 5                    # seconds between two last_modified_time() polls (0.1 .. 3600)
    host_system = kvm7.example.com  # this host's Cobbler system (default: its host name, then FQDN)
    aliases = 10.0.0.5              # other names of the same server that guests' links may carry
    timeout = 10                    # seconds one XML-RPC call may take
    full_refresh = 3600             # seconds between re-reads of every record (0: never)
    workers = 4                     # records read in parallel
    cache = /var/lib/hostkv/cobbler-host.json   # the host keys last read (kept across restarts)

What it reads, over XML-RPC, never logging in (no credentials are needed, none are stored):

  * every ``interval`` seconds ``last_modified_time()``, Cobbler's own "has anything changed"
    call (one tiny request).  Unchanged: nothing else is asked - except the records of guests
    not read yet (a new link, a guest that migrated in, hostkvd just started);
  * changed: ``get_systems_since`` / ``get_profiles_since`` / ``get_distros_since`` /
    ``get_images_since`` (the previous mtime minus :data:`SINCE_MARGIN`, so a save that was still
    running when the previous mtime was read is not missed) say what changed: only systems ->
    the guests linked to those systems and this host's record if among them; a profile, distro or
    image -> every linked guest and the host record (blending may have changed anywhere below
    it).  First poll, an mtime that went backwards (a restored Cobbler) or ``full_refresh``
    elapsed -> everything (the net for what "since" cannot see: deletions, renames);
  * for each of those: ``get_blended_data`` of the guest's linked system (or profile) - the
    autoinstall_meta blended distro -> profile -> system, exactly what koan and the kickstart see.

What it does with it:

  * a guest's ``hostkv_vm_<name>`` options -> its ``vm.<name>`` keys, written into its domain
    metadata as the link's keys (``hostkvd/metadata_writer.py``), and only when they differ from
    what is there: they travel with live migration, survive a Cobbler outage and a hostkvd
    restart, and a Cobbler edit that does not change a guest's keys writes and pushes nothing.
    Removing an option in Cobbler removes the key.  A local key of the same name
    (``hostkvctl vm set``) wins over Cobbler's (hostkv.common.domain_xml precedence).
  * this host's record's ``hostkv_host_<name>`` options -> ``host.<name>`` for every guest on
    this host (over the built-ins; under hostkvd.conf's ``[host]``), kept in ``cache``.
  * a record holding an invalid option (a bad key, a value over a limit; the Cobbler plugin's
    validator refuses those, but records edited before it was installed may hold one) is skipped
    whole: one log line names the system and the option, and that guest keeps exactly the keys
    it had.  A linked system that is not found keeps its guest's keys, reported the same way.
  * Cobbler unreachable, or answering garbage (an HTML error page, a non-number mtime): the last
    values stay, every guest keeps being served, status says ``unreachable since ...``; each
    change of state is logged once.  A server that wants a login token (an auth proxy, a
    locked-down API) is state ``needs-token``, saying so: hostkvd never logs in.

Links whose ``server`` names another Cobbler (not ``server`` nor one of ``aliases``) are left
alone and listed in status.  States (one owner, :meth:`Source._set_state`): ``starting`` (no
answer yet), ``ok``, ``unreachable``, ``needs-token``.
"""

import asyncio
import concurrent.futures
import enum
import http.client
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.parse
import xmlrpc.client
from xml.parsers.expat import ExpatError

from hostkv.common import atomic, domain_xml, entries, options as hostkv_options, paths
from hostkv.hostkvd import hostvalues
from hostkv.hostkvd.timeout import within

log = logging.getLogger("hostkvd.cobbler")

SECTION = "cobbler"
TYPE = "cobbler"                # the SourceLink type in domain metadata
SINCE_MARGIN = 60.0             # seconds of overlap when asking "what changed since"
DEFAULTS = {"interval": 5.0, "timeout": 10.0, "full_refresh": 3600.0, "workers": 4,
            "host_system": None, "aliases": (),
            "cache": os.path.join(paths.HOSTKVD_STATE_DIR, "cobbler-host.json")}
LIMITS = {"interval": (0.1, 3600.0), "timeout": (0.5, 300.0), "full_refresh": (0.0, 86400.0 * 7),
          "workers": (1, 32)}
_TOKEN_RE = re.compile(r"token|login|authenticat|not authori[sz]ed|permission denied", re.I)


class State(enum.Enum):
    STARTING = "starting"
    OK = "ok"
    UNREACHABLE = "unreachable"
    NEEDS_TOKEN = "needs-token"


# ---------------------------------------------------------------- options

def normalize_server(text):
    """The XML-RPC URL ``text`` (host, host:port or URL) stands for; ValueError if it can't be one."""
    text = (text or "").strip()
    if not text or any(c.isspace() for c in text):
        raise ValueError("server must be a host name, host:port or http(s) URL without spaces")
    if "://" not in text:
        text = "http://" + text
    url = urllib.parse.urlsplit(text)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError("server must be http:// or https:// (got %r)" % text[:80])
    if url.username or url.password:
        raise ValueError("server must not carry credentials: hostkvd reads Cobbler without logging in")
    try:
        url.port
    except ValueError as err:
        raise ValueError("server: %s" % err)
    path = url.path or "/cobbler_api"
    return urllib.parse.urlunsplit((url.scheme, url.netloc, path, url.query, ""))


def server_key(url):
    """What two spellings of one server have in common: (host, port, path), default ports as None."""
    parts = urllib.parse.urlsplit(normalize_server(url))
    port = parts.port
    if port == {"http": 80, "https": 443}[parts.scheme]:
        port = None
    return (parts.hostname.lower(), port, parts.path.rstrip("/") or "/")


def _number(name, value, where):
    low, high = LIMITS[name]
    try:
        number = int(value) if name == "workers" else float(value)
    except ValueError:
        raise ValueError("%s: %s must be a number, not %r" % (where, name, value[:20]))
    if not low <= number <= high:
        raise ValueError("%s: %s must be between %g and %g" % (where, name, low, high))
    return number


def parse_options(items):
    """The [cobbler] section (``[(name, value, where)]``) -> options dict, or None (no server)."""
    opts = dict(DEFAULTS)
    seen = {}
    server_where = None
    for name, value, where in items:
        if name in seen:
            raise ValueError("%s: %s is set twice (first at %s)" % (where, name, seen[name]))
        seen[name] = where
        if name == "server":
            if value:
                try:
                    opts["server"] = normalize_server(value)
                except ValueError as err:
                    raise ValueError("%s: %s" % (where, err))
            server_where = where
        elif name in LIMITS:
            opts[name] = _number(name, value, where)
        elif name == "host_system":
            opts[name] = value or None
        elif name == "aliases":
            try:
                opts[name] = tuple(normalize_server(a) for a in re.split(r"[\s,]+", value) if a)
            except ValueError as err:
                raise ValueError("%s: aliases: %s" % (where, err))
        elif name == "cache":
            if value and not value.startswith("/"):
                raise ValueError("%s: cache must be an absolute path (or empty: no cache)" % where)
            opts[name] = value or None
        else:
            raise ValueError("%s: unknown option %r in [cobbler] (known: server, %s)"
                             % (where, name[:40], ", ".join(sorted(DEFAULTS))))
    if not opts.get("server"):
        if server_where is None and items:
            raise ValueError("%s: [cobbler] has no server = ... (an empty server turns it off)"
                             % items[0][2])
        return None
    opts["identity"] = opts["server"]
    return opts


# ---------------------------------------------------------------- XML-RPC client

class CobblerError(Exception):
    """One failed call: ``kind`` is 'unreachable', 'needs-token', 'garbage' (not XML-RPC, or not
    what the call returns), 'fault' (the server failed that call) or 'not-found'."""

    def __init__(self, kind, message):
        Exception.__init__(self, message)
        self.kind = kind


class _Transport(xmlrpc.client.Transport):
    def __init__(self, timeout):
        xmlrpc.client.Transport.__init__(self)
        self._timeout = timeout

    def make_connection(self, host):
        conn = xmlrpc.client.Transport.make_connection(self, host)
        conn.timeout = self._timeout
        return conn


class _SafeTransport(xmlrpc.client.SafeTransport):
    def __init__(self, timeout):
        xmlrpc.client.SafeTransport.__init__(self)
        self._timeout = timeout

    def make_connection(self, host):
        conn = xmlrpc.client.SafeTransport.make_connection(self, host)
        conn.timeout = self._timeout
        return conn


class Client(object):
    """Blocking, thread-safe (one proxy per thread) reads of one Cobbler server."""

    def __init__(self, url, timeout):
        self.url = url
        self.timeout = timeout
        self._local = threading.local()

    def _proxy(self):
        proxy = getattr(self._local, "proxy", None)
        if proxy is None:
            transport = (_SafeTransport if self.url.startswith("https:") else _Transport)(self.timeout)
            proxy = self._local.proxy = xmlrpc.client.ServerProxy(self.url, transport=transport,
                                                                  allow_none=True)
        return proxy

    def call(self, method, *args):
        try:
            return getattr(self._proxy(), method)(*args)
        except xmlrpc.client.Fault as err:
            text = str(err.faultString)
            if "not found" in text:
                raise CobblerError("not-found", text[:300])
            if _TOKEN_RE.search(text):
                raise CobblerError("needs-token", "%s refused %s() without a login token (%s)"
                                   % (self.url, method, text[:200]))
            raise CobblerError("fault", "%s() failed on the server: %s" % (method, text[:300]))
        except xmlrpc.client.ProtocolError as err:
            self._local.proxy = None
            if err.errcode in (401, 403, 407):
                raise CobblerError("needs-token", "%s answered HTTP %d %s to %s(): it requires "
                                   "authentication" % (self.url, err.errcode, err.errmsg, method))
            raise CobblerError("unreachable", "HTTP %d %s from %s" % (err.errcode, err.errmsg, self.url))
        except (OSError, socket.timeout) as err:    # refused, reset, timed out, closed unanswered
            self._local.proxy = None
            raise CobblerError("unreachable", "%s: %s" % (self.url, err or type(err).__name__))
        except (xmlrpc.client.ResponseError, ExpatError, ValueError, TypeError, KeyError, IndexError,
                http.client.HTTPException) as err:
            self._local.proxy = None   # e.g. an HTML page or a truncated answer
            raise CobblerError("garbage", "%s answered something that is not XML-RPC (%s)"
                               % (self.url, str(err)[:200] or type(err).__name__))

    def last_modified_time(self):
        value = self.call("last_modified_time")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise CobblerError("garbage", "last_modified_time() answered %r, not a time" % (value,))
        return float(value)

    def changed_since(self, mtime):
        """``{(kind, name): item mtime}`` of the systems, profiles, distros and images saved at or
        after ``mtime`` (kind: 'system', 'profile', 'distro', 'image')."""
        out = {}
        for kind in ("systems", "profiles", "distros", "images"):
            items = self.call("get_%s_since" % kind, mtime)
            if not isinstance(items, list):
                raise CobblerError("garbage", "get_%s_since() answered a %s" % (kind, type(items).__name__))
            for item in items:
                if not isinstance(item, dict):
                    raise CobblerError("garbage", "get_%s_since() answered a list of %s"
                                       % (kind, type(item).__name__))
                if not item.get("mtime"):       # Cobbler lists never-saved items (mtime 0) every time
                    continue
                out[(kind[:-1], str(item.get("name")))] = item["mtime"]
        return out

    def autoinstall_meta(self, system=None, profile=None):
        """The blended autoinstall_meta of a system (or a profile), as a dict."""
        data = self.call("get_blended_data", profile or "", system or "")
        if not isinstance(data, dict):
            raise CobblerError("garbage", "get_blended_data() answered a %s" % type(data).__name__)
        meta = data.get("autoinstall_meta", {})
        if isinstance(meta, str):
            meta = hostkv_options.parse_flattened(meta)
        if meta in ("~", None):
            meta = {}
        if not isinstance(meta, dict):
            raise CobblerError("garbage", "autoinstall_meta is a %s" % type(meta).__name__)
        return meta


# ---------------------------------------------------------------- the source

def _record_name(link):
    """('system', name) or ('profile', name) of a cobbler link."""
    if link.attrs.get("system"):
        return "system", link.attrs["system"]
    return "profile", link.attrs.get("profile", "")


class Source(object):
    """The Cobbler key source of one hostkvd (module docstring)."""

    def __init__(self, options, api, client=None, hostname=None):
        self.opts = options
        self.api = api
        self.url = options["server"]
        self.interval = options["interval"]
        self._servers = set(server_key(u) for u in (self.url,) + tuple(options["aliases"]))
        self.client = client or Client(self.url, options["timeout"])
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=options["workers"])
        self._hostname = hostname or socket.gethostname()
        self.state = State.STARTING
        self.since = time.time()
        self.reason = None
        self.mtime = None                # Cobbler's mtime everything fresh was read against
        self._full_at = 0.0              # loop time of the last full re-read
        self._items = {}                 # (kind, name) -> item mtime already acted on (the margin's repeats)
        self._fresh = {}                 # guest key -> link identity read since its last change
        self._fetched = {}               # guest key -> the valid keys last read for it
        self._problems = {}              # guest key -> last problem (logged when it changes)
        self._pending = {}               # guest key -> SourceLink to write (until metadata shows it)
        self._due = set()                # pending keys to write on the next flush
        self._labels = {}
        self._foreign = {}               # guest label -> the other server it is linked to
        self._host_fresh = False
        self._host_record = None         # the Cobbler system name found for this host
        self._host_problem = None
        self.host_values = {}
        self.host_values_from = None     # 'cobbler' or 'cache'
        self.counters = {"polls": 0, "failed_polls": 0, "changes": 0, "reads": 0, "writes": 0,
                         "skipped_records": 0}
        self.last_poll = None
        self.last_change = None
        self._wake = asyncio.Event()
        self._load_cache()

    # ------------------------------------------------------------ contract
    def guests_changed(self):
        self._wake.set()

    async def run(self):
        loop = asyncio.get_event_loop()
        next_poll = loop.time()
        try:
            while True:
                if loop.time() >= next_poll:
                    next_poll = max(next_poll + self.interval, loop.time())
                    if await self._poll():
                        await self._read_records()
                    self._due.update(self._pending)        # failed writes: retried once per poll
                elif self.state is State.OK:
                    await self._read_records()              # woken: guests arrived or changed
                self._reconcile()
                await self._flush()
                self._wake.clear()
                await within(self._wake.wait(), next_poll - loop.time())
        finally:
            self._pool.shutdown(wait=False)

    def status(self):
        guests = {}
        for key, label in sorted(self._labels.items(), key=lambda kv: kv[1]):
            guests[label] = {"problem": self._problems.get(key), "pending_write": key in self._pending,
                             "keys": len(self._fetched.get(key, {}))}
        summary = "%s %s" % (self.url, self.state.value)
        if self.state is not State.OK and self.state is not State.STARTING:
            summary += " since %s (%s)" % (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since)),
                                           self.reason)
        return {"type": TYPE, "server": self.url, "state": self.state.value, "since": self.since,
                "reason": self.reason, "summary": summary, "interval": self.interval, "mtime": self.mtime,
                "last_poll": self.last_poll, "last_change": self.last_change, "counters": dict(self.counters),
                "host_record": self._host_record, "host_problem": self._host_problem,
                "host_values": dict(self.host_values), "host_values_from": self.host_values_from,
                "guests": guests, "other_servers": dict(self._foreign), "pending_writes": len(self._pending),
                "writable": self.api.writable}

    # ------------------------------------------------------------ state (one owner)
    def _set_state(self, state, reason=None):
        if state is self.state:
            self.reason = reason if reason else self.reason
            return
        old, was = self.state, self.since
        self.state, self.since, self.reason = state, time.time(), reason
        if state is State.OK:
            if old is State.STARTING:
                log.info("cobbler: %s answers; polling last_modified_time() every %g s", self.url, self.interval)
            else:
                log.warning("cobbler: %s answers again after %.0f s; values read meanwhile stay until "
                            "Cobbler changes them", self.url, self.since - was)
        elif state is State.NEEDS_TOKEN:
            log.error("cobbler: %s; hostkvd reads Cobbler without logging in and stores no credentials: "
                      "allow anonymous read-only XML-RPC (last_modified_time, get_*_since, "
                      "get_blended_data) for this host, or remove [cobbler]. Last known keys stay.", reason)
        else:
            log.warning("cobbler: unreachable (%s); last known keys stay, guests keep being served, "
                        "retrying every %g s (logged once)", reason, self.interval)

    def _failed(self, err):
        self._set_state(State.NEEDS_TOKEN if err.kind == "needs-token" else State.UNREACHABLE, str(err))

    async def _call(self, fn, *args):
        return await asyncio.get_event_loop().run_in_executor(self._pool, fn, *args)

    # ------------------------------------------------------------ polling
    async def _poll(self):
        """One last_modified_time(); mark what it says changed as not fresh.  False on failure."""
        loop = asyncio.get_event_loop()
        self.counters["polls"] += 1
        self.last_poll = time.time()
        try:
            mtime = await self._call(self.client.last_modified_time)
            full = (self.mtime is None or mtime < self.mtime or (
                self.opts["full_refresh"] and loop.time() - self._full_at >= self.opts["full_refresh"]))
            items = {}
            if full or mtime != self.mtime:
                items = await self._call(self.client.changed_since, (self.mtime or mtime) - SINCE_MARGIN)
        except CobblerError as err:
            self.counters["failed_polls"] += 1
            self._failed(err)
            return False
        self._set_state(State.OK)
        changed = dict((k, t) for k, t in items.items() if self._items.get(k) != t)
        self._items = dict((k, t) for k, t in items.items())     # what the next margin will repeat
        systems = set(name for kind, name in changed if kind == "system")
        other = any(kind != "system" for kind, _name in changed)
        if full or other:
            if not full:
                log.info("cobbler: a profile, distro or image changed: re-reading every linked record")
            self._fresh.clear()
            self._host_fresh = False
            self._full_at = loop.time() if full else self._full_at
        elif systems:
            for key, ident in list(self._fresh.items()):
                if ident[1] == "system" and ident[2] in systems:
                    del self._fresh[key]
            if self._host_record is None or self._host_record in systems:
                self._host_fresh = False
        if mtime != self.mtime:
            if self.mtime is not None:
                self.counters["changes"] += 1
                self.last_change = time.time()
            self.mtime = mtime
        return True

    def _linked(self):
        """``{key: (label, link)}`` of served guests linked to this server; notes the others."""
        out = {}
        self._foreign = {}
        for guest in self.api.guests():
            link = guest.meta.source(TYPE) if guest.meta is not None else None
            if link is None:
                continue
            server = link.attrs.get("server")
            try:
                ours = server is None or server_key(server) in self._servers
            except ValueError:
                ours = False
            if not ours:
                self._foreign[guest.label] = server
                continue
            out[guest.key] = (guest.label, link)
        for gone in set(self._labels) - set(out):
            for table in (self._fresh, self._fetched, self._problems, self._pending, self._labels):
                table.pop(gone, None)
            self._due.discard(gone)
        for key, (label, _link) in out.items():
            self._labels[key] = label
        return out

    async def _read_records(self):
        """Read the records of linked guests that are not fresh, and the host record."""
        linked = self._linked()
        todo = []
        for key, (label, link) in sorted(linked.items()):
            kind, name = _record_name(link)
            ident = (self.mtime, kind, name)
            fresh = self._fresh.get(key)
            if fresh is None or fresh[1:] != ident[1:]:
                todo.append((key, label, link, ident))
        if todo:
            results = await asyncio.gather(*[self._call(self._read_one, link) for _k, _l, link, _i in todo])
            for (key, label, link, ident), (meta, err) in zip(todo, results):
                if err is not None and err.kind in ("unreachable", "needs-token", "garbage"):
                    # the server, not this record: stop here, the rest are read when it answers
                    self._failed(err)
                    return
                self.counters["reads"] += 1
                self._fresh[key] = ident
                self._take(key, label, link, meta, err)
        if not self._host_fresh:
            await self._read_host()

    def _read_one(self, link):
        kind, name = _record_name(link)
        try:
            return self.client.autoinstall_meta(**{kind: name}), None
        except CobblerError as err:
            return None, err

    def _report(self, key, label, problem, skipped=True):
        if problem and self._problems.get(key) != problem:
            log.warning("cobbler: domain %s: %s", label, problem)
            self.counters["skipped_records"] += skipped
        elif not problem and self._problems.get(key):
            log.info("cobbler: domain %s: its record reads cleanly again", label)
        if problem:
            self._problems[key] = problem
        else:
            self._problems.pop(key, None)

    def _take(self, key, label, link, meta, err):
        kind, name = _record_name(link)
        if err is not None:          # not found, or the server failed on this record
            what = "not found" if err.kind == "not-found" else "unreadable (%s)" % err
            self._report(key, label, "Cobbler %s %s %s; keeping the %d key(s) it had"
                         % (kind, name, what, len(link.values)))
            return
        try:
            values = hostkv_options.vm_values(meta)
        except hostkv_options.OptionError as err:
            self._report(key, label, "Cobbler %s %s: %s: record skipped, the guest keeps its keys"
                         % (kind, name, err))
            return
        local = self._local_keys(key)
        if len(set(values) | set(local)) > entries.MAX_KEYS:
            self._report(key, label, "Cobbler %s %s: %d keys with the local ones, the limit is %d: "
                         "record skipped" % (kind, name, len(set(values) | set(local)), entries.MAX_KEYS))
            return
        self._report(key, label, None)
        self._fetched[key] = values
        if values != link.values:
            attrs = link.identity()
            attrs["fetched"] = "%.6f" % self.mtime
            self._pending[key] = domain_xml.SourceLink(TYPE, attrs, values)
            self._due.add(key)

    def _local_keys(self, key):
        for guest in self.api.guests():
            if guest.key == key and guest.meta is not None:
                return guest.meta.keys
        return {}

    # ------------------------------------------------------------ the host's own record
    def _host_candidates(self):
        if self.opts["host_system"]:
            return [self.opts["host_system"]]
        names = [self._hostname, hostvalues.fqdn(self._hostname)]
        return [n for i, n in enumerate(names) if n and n not in names[:i]]

    async def _read_host(self):
        meta, found, missing = None, None, []
        for name in ([self._host_record] if self._host_record else []) + self._host_candidates():
            if name in missing:
                continue
            try:
                meta = await self._call(self.client.autoinstall_meta, name)
                found = name
                break
            except CobblerError as err:
                if err.kind == "fault":
                    self._host_report("Cobbler system %s (this host) is unreadable: %s; host keys "
                                      "unchanged" % (name, err))
                    self._host_fresh = True
                    return
                if err.kind != "not-found":
                    self._failed(err)
                    return
                missing.append(name)
        self.counters["reads"] += 1
        self._host_fresh = True
        if found is None:
            problem = ("no Cobbler system named %s: no hostkv_host_* keys from Cobbler%s"
                       % (" or ".join(missing), "; keeping the last ones read" if self.host_values else ""))
            self._host_report(problem, info=not self.host_values)
            return
        self._host_record = found
        try:
            values = hostkv_options.host_values(meta)
        except hostkv_options.OptionError as err:
            self._host_report("Cobbler system %s (this host): %s: record skipped, host keys unchanged"
                              % (found, err))
            return
        refused = self.api.set_host_values(values)
        if refused:
            self._host_report("Cobbler system %s (this host): %s; host keys unchanged" % (found, refused))
            return
        self._host_report(None)
        if values != self.host_values or self.host_values_from != "cobbler":
            if values != self.host_values:
                log.info("cobbler: host keys from system %s: %s", found,
                         ", ".join(sorted(values)) or "(none)")
            self.host_values, self.host_values_from = values, "cobbler"
            self._save_cache()

    def _host_report(self, problem, info=False):
        if problem and problem != self._host_problem:
            (log.info if info else log.warning)("cobbler: %s", problem)
            if not info:
                self.counters["skipped_records"] += 1
        self._host_problem = problem

    def _load_cache(self):
        path = self.opts.get("cache")
        if not path:
            return
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
            if doc.get("server") != self.url:
                return
            values = entries.validate_entries(doc.get("values", {}), scope="host")
        except FileNotFoundError:
            return
        except (OSError, ValueError, AttributeError) as err:
            log.warning("cobbler: ignoring the cache %s: %s", path, err)
            return
        if not self.api.set_host_values(values):
            self.host_values, self.host_values_from = values, "cache"
            self._host_record = doc.get("host_system") or None
            log.info("cobbler: %d host key(s) from the cache %s until Cobbler answers", len(values), path)

    def _save_cache(self):
        path = self.opts.get("cache")
        if not path:
            return
        doc = {"server": self.url, "host_system": self._host_record, "mtime": self.mtime,
               "saved": time.time(), "values": self.host_values}
        try:
            atomic.write_atomic(path, json.dumps(doc, indent=1, sort_keys=True) + "\n", mode=0o600,
                                makedirs=True)
        except OSError as err:
            log.warning("cobbler: cannot write the cache %s: %s (host keys will be missing after a "
                        "restart while Cobbler is unreachable)", path, err)

    # ------------------------------------------------------------ writes
    def _reconcile(self):
        """Forget pending writes the metadata now shows; re-queue keys that drifted from Cobbler's."""
        for key, (label, link) in self._linked().items():
            pending = self._pending.get(key)
            if pending is not None and link.values == pending.values:
                del self._pending[key]
                self._due.discard(key)
            elif pending is None and key in self._fetched and link.values != self._fetched[key] \
                    and self._fresh.get(key, (None, None, None))[1:] == _record_name(link):
                attrs = link.identity()
                attrs["fetched"] = "%.6f" % (self.mtime or 0)
                self._pending[key] = domain_xml.SourceLink(TYPE, attrs, self._fetched[key])

    async def _flush(self):
        due = dict((key, self._pending[key]) for key in self._due if key in self._pending)
        self._due.clear()
        if not due:
            return
        if not self.api.writable:
            for key in due:
                self._report(key, self._labels.get(key, key), "cannot store Cobbler's keys: hostkvd "
                             "has no libvirt connection to write the domain metadata with", skipped=False)
            return
        results = await self.api.write_links(due)
        for key, problem in results.items():
            label = self._labels.get(key, key)
            if problem:
                self._report(key, label, "storing Cobbler's keys in the domain metadata failed: %s "
                             "(retried every %g s)" % (problem, self.interval), skipped=False)
            else:
                self.counters["writes"] += 1
                log.info("cobbler: domain %s: %d vm key(s) from %s %s stored in its metadata", label,
                         len(due[key].values), *_record_name(due[key]))
