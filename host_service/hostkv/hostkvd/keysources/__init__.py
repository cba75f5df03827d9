"""Key sources: where hostkvd gets keys besides its config file and the guests' libvirt metadata.

A *channel* source (``hostkvd/sources/``) says which guests exist and where their sockets are.
A *key* source says what some of their keys are, from a system of record (Cobbler today; a CMDB
tomorrow).  Each one is ONE module in this package, listed in :data:`MODULES`, that defines:

  ``SECTION``                 its hostkvd.conf section (``[cobbler]``).  No section: the source
                              does not run (off by default, nothing changes on hosts that don't ask).
  ``parse_options(items)``    ``items`` is ``[(name, value, where)]`` for its section's lines
                              (``where`` = ``path:line``); returns its options as a plain dict
                              (compared on reload: a change restarts the source; a change of its
                              ``identity`` entry, e.g. another server, also drops its host keys), or
                              None when the section leaves it off.  A bad line raises ``ValueError("<where>: ...")``:
                              hostkvd refuses the whole config, naming file and line.
  ``Source(options, api)``    constructed on the daemon's loop; must not block (it may read a
                              small cache file).  Then:
      ``async run()``         until cancelled.  An outage of what it reads never ends it and never
                              touches a guest: it keeps the last known values, says so in
                              ``status()`` and logs each change of state once.
      ``status()``            a JSON-able dict, shown by ``hostkvctl status`` under ``keysources``
                              (``state`` and ``summary`` at least).
      ``guests_changed()``    called on the loop when the served guests or their metadata changed.

It talks to hostkvd only through ``api`` (:class:`KeySourceAPI`):

  ``api.set_host_values(values)``   this source's host.* keys for every guest (replaces its
                                    previous set).  Returns None, or why they were refused
                                    (over a limit): then the previous ones stay.
  ``api.guests()``                  ``[Guest(key, label, meta)]`` of the served guests, ``meta``
                                    their :class:`hostkv.common.domain_xml.HostkvMetadata` (its
                                    ``source(TYPE)`` is this source's link, if any).
  ``api.writable``                  True when guests' metadata can be written (libvirt mode).
  ``await api.write_links(links)``  ``{key: SourceLink}``: store each link (with the keys read
                                    for that guest) in the guest's domain metadata, so they travel
                                    with live migration and survive an outage of the source.
                                    Returns ``{key: None or problem}``.  hostkvd serves the new
                                    keys when libvirt reports the metadata change: the metadata is
                                    the one place a guest's keys live.

Precedence (stated once; ``docs/DESIGN.md`` repeats it): host.* keys: built-ins < key sources <
the ``[host]`` section of hostkvd.conf (``hostkvctl host set``); vm.* keys: a source's keys <
local keys (``hostkvctl vm set``), see :class:`hostkv.common.domain_xml.HostkvMetadata`.  A key
source can override a built-in (``hostkv_host_hostname``), never a local choice.
"""

import asyncio
import collections
import importlib
import logging

log = logging.getLogger("hostkvd.keysources")

MODULES = ("cobbler",)

Guest = collections.namedtuple("Guest", "key label meta")


def module(name):
    return importlib.import_module("hostkv.hostkvd.keysources.%s" % name)


def sections():
    """``{section: module name}`` of every key source (config.py uses it)."""
    return dict((module(name).SECTION, name) for name in MODULES)


class KeySourceAPI(object):
    """What one key source may do to hostkvd (see the module contract)."""

    def __init__(self, daemon, name):
        self._daemon = daemon
        self.name = name

    def set_host_values(self, values):
        return self._daemon.set_keysource_host_values(self.name, values)

    def guests(self):
        return self._daemon.keysource_guests()

    @property
    def writable(self):
        return self._daemon.metadata_writer is not None

    async def write_links(self, links):
        writer = self._daemon.metadata_writer
        if writer is None:
            return dict((key, "guests' metadata cannot be written (no libvirt)") for key in links)
        return await writer.write_links(links)


class KeySources(object):
    """The running key sources of one daemon: started, restarted and stopped from its config."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.running = {}        # name -> (options, source, task)

    def apply(self, keysource_options):
        """Start/restart/stop sources to match ``{name: options}`` (a Config's ``keysources``)."""
        for name in MODULES:
            options = keysource_options.get(name)
            current = self.running.get(name)
            if current is not None and current[0] == options:
                continue
            if current is not None:
                self._stop(name)
                if options is None or options.get("identity") != current[0].get("identity"):
                    self.daemon.set_keysource_host_values(name, {})   # off, or another server now
            if options is not None:
                source = module(name).Source(options, KeySourceAPI(self.daemon, name))
                task = asyncio.ensure_future(self._run(name, source))
                self.running[name] = (options, source, task)
                log.info("key source %s started", name)

    async def _run(self, name, source):
        try:
            await source.run()
        except asyncio.CancelledError:
            raise
        except Exception:   # noqa: BLE001 - a bug in a source must not end hostkvd; its keys stay
            log.exception("key source %s failed; its last values stay (reload to restart it)", name)

    def _stop(self, name):
        _options, _source, task = self.running.pop(name)
        task.cancel()
        log.info("key source %s stopped", name)

    def guests_changed(self):
        for _options, source, _task in list(self.running.values()):
            source.guests_changed()

    def status(self):
        return dict((name, source.status()) for name, (_o, source, _t) in self.running.items())

    async def close(self):
        tasks = [task for _o, _s, task in self.running.values()]
        for name in list(self.running):
            self._stop(name)
        await asyncio.gather(*tasks, return_exceptions=True)
