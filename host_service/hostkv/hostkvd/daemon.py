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
"""

import asyncio
import logging
import os
import socket
import time
import uuid

from hostkv import protocol
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
            self.channels[key] = channel
            if vm_values:
                channel.vm_values = self._checked_vm_values(key, vm_values, {})
            self._refresh(channel, push=False)
            log.info("%s: serving %s", channel.label, path)
            channel.start()
            self.keysources.guests_changed()
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
            await channel.close()
            self.keysources.guests_changed()

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
        log.info("config reloaded from %s: %s, pushed to %d guest(s)", self.config_path,
                 "host values changed" if changed else "no change", pushed)
        return True, "reloaded; pushed to %d guest(s)" % pushed

    def set_host_keys(self, set_values=None, unset=()):
        """Persist host.* changes in the config file (atomically), then reload and push."""
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

    def _check_host_values(self, values):
        """Refuse host values that would make a snapshot over the protocol limits."""
        probe = protocol.Snapshot("x" * protocol.MAX_HOST_ID_BYTES, 2 ** 53, dict(values))
        protocol.validate_values(probe.values)
        protocol.encode(probe.to_frame(), protocol.MAX_SNAPSHOT_BYTES)
        return values

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
        try:
            protocol.encode(snap.to_frame(), protocol.MAX_SNAPSHOT_BYTES)
        except protocol.ProtocolError as err:
            log.error("%s: snapshot refused, keeping the previous one: %s", channel.label, err)
            return False
        channel.snapshot = snap
        if push:
            channel.push()
        return True

    def _refresh_all(self):
        return sum(1 for ch in list(self.channels.values()) if self._refresh(ch) and ch.connected)

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
