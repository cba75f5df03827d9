"""Hostkvd: the host's values and the set of guest channels being served.

Channel sources (sources/) call :meth:`add_channel`, :meth:`remove_channel` and
:meth:`set_vm_values`; the control socket and SIGHUP call :meth:`reload_config` and
:meth:`set_host_keys`; key sources (keysources/) call :meth:`set_keysource_host_values` and
:meth:`keysource_guests` through their KeySourceAPI.  Every guest gets ``host.*`` (shared; built-ins
< key sources < the config's [host], filtered by that guest's privacy policy, policy.py) plus its
own ``vm.*`` keys; a change bumps that guest's ``generation`` and pushes the new snapshot to that
guest only.

``generation`` comes from one counter per daemon, seeded from the wall clock in milliseconds, so
it grows across daemon restarts too; compare generations only within one ``host_id``.

Limits (docs/PROTOCOL.md): a snapshot over a protocol limit is never sent.  ``host set`` and the
``check-vm`` control op refuse up front a change that would put a guest over one (naming each
guest); what cannot be refused up front (a config reload, metadata edited by hand) makes that
guest's channel ``undeliverable``: logged once per guest and reason, shown in status, the guest
told (HostSession.push), and never counted in "pushed to N guest(s)".

systemd: :meth:`status_line` ("serving 12 guests; libvirt up") is sent as ``STATUS=`` whenever it
changes (hostkv.common.sd_notify; a no-op outside systemd).
"""

import asyncio
import copy
import logging
import os
import socket
import time
import uuid

from hostkv import protocol
from hostkv.common import entries, sd_notify
from hostkv.hostkvd import VERSION, config, hostvalues, keysources, policy
from hostkv.hostkvd.channel import Channel

log = logging.getLogger("hostkvd")

HOST_ID_NAMESPACE = uuid.UUID("6f1c1f7e-4d0a-4a4e-9d7e-686f73746b76")


def derived_host_id(hostname=None, machine_id_path="/etc/machine-id"):
    """A stable host id when libvirt gives none: UUIDv5 of machine-id and host name."""
    try:
        with open(machine_id_path) as f:
            machine_id = f.read().strip()
    except OSError:
        machine_id = ""
    return str(uuid.uuid5(HOST_ID_NAMESPACE, "%s/%s" % (machine_id, hostname or socket.gethostname())))


def snapshot_problem(snap):
    """The ProtocolError that keeps ``snap`` from being sent (HostSession.push's checks), or None."""
    try:
        protocol.validate_host_id(snap.host_id)
        protocol.validate_values(snap.values)
        protocol.encode(snap.to_frame(), protocol.MAX_SNAPSHOT_BYTES)
    except protocol.ProtocolError as err:
        return err
    return None


def check_host_values(values):
    """Refuse host values that would make a snapshot over the protocol limits (before any vm.*
    keys: those are checked per guest); returns ``values``.  ``hostkvctl check`` uses it too."""
    probe = protocol.Snapshot("x" * protocol.MAX_HOST_ID_BYTES, 2 ** 53, dict(values))
    protocol.validate_values(probe.values)
    protocol.encode(probe.to_frame(), protocol.MAX_SNAPSHOT_BYTES)
    return values


class Hostkvd(object):
    def __init__(self, config_path=config.DEFAULT_PATH, host_id=None, hostname=None):
        self.config_path = config_path
        self.config = config.load(config_path)          # ConfigError is fatal at start-up only
        self.server_name = "hostkvd/%s" % VERSION
        self._hostname = hostname
        self._host_id_arg = host_id
        self._source_host_id = None
        self._keysource_host = {}       # key source name -> its host.* values
        self.host_values, self.host_origins = self._layered(self.config)
        self.privacy = policy.Privacy(self.config.opaque_host_id)
        self.guest_meta = {}            # channel key -> HostkvMetadata (policy, source links)
        self.metadata_writer = None     # set in libvirt mode: keysources store keys through it
        self.keysources = keysources.KeySources(self)
        self.channels = {}
        self.started = time.time()
        self._generation = int(time.time() * 1000)
        self.source_status = None     # the channel source's own state (LibvirtSource.status())
        self.last_pushed = 0          # guests the last reload/host set reached
        self._status_line = None
        self._logged_undeliverable = {}   # key -> reason logged (once per guest and reason)

    # ------------------------------------------------------------------ identity

    @property
    def host_id(self):
        return (self._host_id_arg or self.config.host_id or self._source_host_id
                or derived_host_id(self._hostname))

    def set_host_id(self, host_id):
        """The channel source's idea of the host id (libvirt's host UUID); re-pushes if it changed."""
        protocol.validate_host_id(host_id)
        if host_id != self._source_host_id:
            self._source_host_id = host_id
            self._refresh_all()

    # ------------------------------------------------------------------ channels

    def add_channel(self, key, path, vm_values=None, label=None, meta=None):
        """Serve the guest channel socket at ``path`` under ``key`` (idempotent).

        ``meta`` (a domain_xml.HostkvMetadata, libvirt source) carries the guest's privacy policy
        and key-source links; it is applied before the first snapshot is made."""
        channel = self.channels.get(key)
        if channel is None:
            if meta is not None:
                self.guest_meta[key] = meta
            channel = Channel(key, path, lambda: channel.snapshot, label, self.server_name)
            channel.on_change = self._channel_changed
            self.channels[key] = channel
            if vm_values:
                channel.vm_values = self._checked_vm_values(key, vm_values, {})
            self._refresh(channel, push=False)
            log.info("%s: serving %s", channel.label, path)
            channel.start()
            self.keysources.guests_changed()
            self.update_status()
            return channel
        if label:
            channel.label = label
        if vm_values is not None or meta is not None:
            self.set_vm_values(key, channel.vm_values if vm_values is None else vm_values, meta)
        if path != channel.path or channel.state == "closed":
            log.info("%s: channel moved to %s", channel.label, path)
            asyncio.ensure_future(channel.set_path(path))
        return channel

    async def remove_channel(self, key):
        channel = self.channels.pop(key, None)
        self.guest_meta.pop(key, None)
        if channel is not None:
            log.info("%s: no longer served", channel.label)
            self._logged_undeliverable.pop(key, None)
            await channel.close()
            self.keysources.guests_changed()
            self.update_status()

    def set_vm_values(self, key, values, meta=None):
        """Replace the guest's vm.* keys (and its metadata, if given); pushes to that guest only,
        and only if its snapshot changed."""
        channel = self.channels.get(key)
        if channel is None:
            raise KeyError(key)
        new = self._checked_vm_values(key, values, channel.vm_values)
        meta_changed = meta is not None and meta != self.guest_meta.get(key)
        if meta_changed:
            self.guest_meta[key] = meta
        if new != channel.vm_values or meta_changed:
            channel.vm_values = new
            self._refresh(channel)
        if meta_changed:
            self.keysources.guests_changed()

    def _checked_vm_values(self, key, values, fallback):
        try:
            return protocol.validate_values(dict(values), scope="vm")
        except protocol.ProtocolError as err:
            log.error("%s: refusing vm keys: %s (keeping the previous ones)", key, err)
            return fallback

    # ------------------------------------------------------------------ host values

    def reload_config(self):
        """Re-read the config file and the host name; push to guests whose snapshot changed.

        Returns (ok, message).  A broken file is refused and the running config is kept.
        """
        try:
            new_config = config.load(self.config_path)
            new_values, new_origins = self._layered(new_config)
        except (config.ConfigError, protocol.ProtocolError) as err:
            log.error("config not reloaded, keeping the running one: %s", err)
            return False, str(err)
        self.config = new_config
        changed = new_values != self.host_values
        self.host_values, self.host_origins = new_values, new_origins
        if new_config.opaque_host_id != self.privacy.override:
            self.privacy = policy.Privacy(new_config.opaque_host_id)
        self.keysources.apply(new_config.keysources)
        pushed = self._refresh_all()
        stuck = sorted(str(ch.label) for ch in self.channels.values() if ch.undeliverable)
        note = ("; undeliverable to %d guest(s) (over a limit: see hostkvctl status): %s"
                % (len(stuck), ", ".join(stuck))) if stuck else ""
        log.info("config reloaded from %s: %s, pushed to %d guest(s)%s", self.config_path,
                 "host values changed" if changed else "no change", pushed, note)
        return True, "reloaded; pushed to %d guest(s)%s" % (pushed, note)

    def set_host_keys(self, set_values=None, unset=()):
        """Persist host.* changes in the config file (atomically), then reload and push.

        Refused, with nothing written, when the change would put any guest over a protocol limit
        (the message names each guest and the limit)."""
        for key, value in (set_values or {}).items():
            entries.validate_entry(key, value, scope="host")
        new_host = dict(self.config.host_values)
        new_host.update(set_values or {})
        for key in unset:
            new_host.pop(key, None)
        prospective = copy.copy(self.config)
        prospective.host_values = new_host
        try:
            prospective_values = self._layered(prospective)[0]
        except protocol.ProtocolError as err:
            return False, "refused, nothing changed: %s" % err
        over = self.guests_over_limit(prospective_values)
        if over:
            return False, ("refused, nothing changed: it would put %d guest(s) over a limit: %s"
                           % (len(over), "; ".join("%s (%s)" % item for item in over)))
        config.update_host_keys(self.config_path, set_values, unset)
        return self.reload_config()

    def _layered(self, cfg, keysource_host=None):
        """``(values, origins)`` of host.* for ``cfg`` and the key sources' values, checked."""
        layers = sorted((keysource_host if keysource_host is not None else self._keysource_host).items())
        values, origins = hostvalues.layered_values(cfg, self._hostname, layers)
        return self._check_host_values(values), origins

    def set_keysource_host_values(self, name, values):
        """A key source's host.* keys for every guest (replacing its previous ones); pushes to the
        guests whose snapshot changed.  Returns None, or why they were refused (previous stay)."""
        try:
            values = protocol.validate_values(dict(values), scope="host")
            layers = dict(self._keysource_host)
            layers[name] = values
            new_values, new_origins = self._layered(self.config, layers)
        except protocol.ProtocolError as err:
            log.error("key source %s: host keys refused, keeping the previous ones: %s", name, err)
            return str(err)
        if not values:
            layers.pop(name, None)
        self._keysource_host = layers
        if (new_values, new_origins) != (self.host_values, self.host_origins):
            self.host_values, self.host_origins = new_values, new_origins
            pushed = self._refresh_all()
            log.info("host keys from %s changed: pushed to %d guest(s)", name, pushed)
        return None

    def keysource_guests(self):
        """The served guests as key sources see them: ``[keysources.Guest(key, label, meta)]``."""
        return [keysources.Guest(key, ch.label, self.guest_meta.get(key)) for key, ch in self.channels.items()]

    def start_keysources(self):
        """Start the key sources the config asks for (on the running loop)."""
        self.keysources.apply(self.config.keysources)

    def guest_policy(self, key):
        meta = self.guest_meta.get(key)
        return (meta.policy if meta is not None and meta.policy else None) or self.config.default_policy

    def guests_over_limit(self, host_values=None, vm_values_of=None):
        """``[(guest label, why)]``: the guests whose snapshot would break a protocol limit with
        ``host_values`` (default: the current ones) and ``vm_values_of`` ({key: vm values})."""
        host_values = self.host_values if host_values is None else host_values
        over = []
        for key, channel in sorted(self.channels.items(), key=lambda kv: str(kv[1].label)):
            vm = (vm_values_of or {}).get(key, channel.vm_values)
            err = self.vm_values_problem(vm, host_values)
            if err is not None:
                over.append((channel.label, str(err)))
        return over

    def vm_values_problem(self, vm_values, host_values=None):
        """Why host values + ``vm_values`` cannot be one guest's snapshot, or None."""
        values = dict(self.host_values if host_values is None else host_values)
        values.update(vm_values)
        return snapshot_problem(protocol.Snapshot(self.host_id, 2 ** 53, values))

    def _check_host_values(self, values):
        return check_host_values(values)

    # ------------------------------------------------------------------ snapshots

    def _next_generation(self):
        self._generation = max(self._generation + 1, int(time.time() * 1000))
        return self._generation

    def _refresh(self, channel, push=True):
        """Rebuild ``channel``'s snapshot; bump generation and push if its content changed."""
        values, host_id = self.privacy.apply(self.guest_policy(channel.key), self.host_values,
                                             self.host_id, channel.key)
        values.update(channel.vm_values)
        old = channel.snapshot
        if old is not None and old.values == values and old.host_id == host_id:
            return False
        snap = protocol.Snapshot(host_id, self._next_generation(), values)
        err = snapshot_problem(snap)
        was = channel.undeliverable
        if err is not None:
            # never sent: the guest is told (HostSession.push) instead of keeping old values as current
            if self._logged_undeliverable.get(channel.key) != str(err):
                self._logged_undeliverable[channel.key] = str(err)
                log.error("%s: snapshot undeliverable, the guest is told its values are stale: %s",
                          channel.label, err)
            channel.undeliverable = str(err)
        else:
            if self._logged_undeliverable.pop(channel.key, None) is not None:
                log.info("%s: snapshot deliverable again", channel.label)
            channel.undeliverable = None
        channel.snapshot = snap
        if push:
            channel.push()
        if channel.undeliverable != was:
            self.update_status()
        return err is None

    def _refresh_all(self):
        """Refresh every guest; returns how many served guests got a new snapshot."""
        changed = [ch for ch in list(self.channels.values()) if self._refresh(ch)]
        self.last_pushed = sum(1 for ch in changed if ch.serving)
        return self.last_pushed

    # ------------------------------------------------------------------ state for humans and systemd

    def set_source_status(self, status):
        """The channel source's state (LibvirtSource: libvirt up/down since, unusable channels)."""
        self.source_status = status
        self.update_status()

    def _channel_changed(self, _channel):
        self.update_status()

    def status_line(self):
        """One line: ``serving 12 guests; libvirt up`` (+ silent/undeliverable counts, outage)."""
        chans = list(self.channels.values())
        serving = sum(1 for ch in chans if ch.serving)
        line = "serving %d guest%s" % (serving, "" if serving == 1 else "s")
        silent = sum(1 for ch in chans if ch.connected and ch.spoke_at is None)
        undeliverable = sum(1 for ch in chans if ch.undeliverable)
        extra = [("%d silent" % silent) if silent else None,
                 ("%d undeliverable" % undeliverable) if undeliverable else None,
                 ("%d not connected" % (len(chans) - serving - silent - undeliverable))
                 if len(chans) - serving - silent - undeliverable > 0 else None]
        extra = [e for e in extra if e]
        if extra:
            line += " (%s)" % ", ".join(extra)
        src = self.source_status
        if src:
            if src.get("state") == "down":
                line += "; libvirt down since %s" % time.strftime("%H:%M:%S", time.localtime(src["since"]))
            else:
                line += "; libvirt %s" % src.get("state")
            if src.get("unusable"):
                line += "; %d unusable channel(s)" % len(src["unusable"])
        return line

    def update_status(self):
        line = self.status_line()
        if line != self._status_line:
            self._status_line = line
            sd_notify.notify("STATUS=" + line)

    def status(self):
        channels = []
        for ch in self.channels.values():
            st = ch.status()
            st.update(self._guest_status(ch))
            channels.append(st)
        return {
            "server": self.server_name, "pid": os.getpid(), "host_id": self.host_id,
            "config": self.config_path, "started": self.started,
            "host_values": dict(self.host_values), "host_origins": dict(self.host_origins),
            "default_policy": self.config.default_policy,
            "keysources": self.keysources.status(),
            "channels": channels,
            "source": self.source_status, "status_line": self.status_line(), "now": time.time(),
        }

    def _guest_status(self, channel):
        """What status adds per guest: its policy and where each of its vm.* keys comes from."""
        meta = self.guest_meta.get(channel.key)
        out = {"policy": self.guest_policy(channel.key),
               "policy_from": "domain" if meta is not None and meta.policy else "default"}
        if meta is not None:
            _values, origins = meta.effective()
            out["vm_origins"] = dict((k, o) for k, o in origins.items() if k in channel.vm_values)
            out["links"] = dict((link.type, link.attrs) for link in meta.sources)
            out["shadowed"] = dict((k, [list(s) for s in v]) for k, v in meta.shadowed().items())
        else:
            out["vm_origins"] = dict((k, "local") for k in channel.vm_values)
        return out

    async def close(self):
        await self.keysources.close()
        for key in list(self.channels):
            await self.remove_channel(key)
