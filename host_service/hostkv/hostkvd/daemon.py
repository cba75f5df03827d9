"""Hostkvd: the host's values and the set of guest channels being served.

Channel sources (sources/) call :meth:`add_channel`, :meth:`remove_channel` and
:meth:`set_vm_values`; the control socket and SIGHUP call :meth:`reload_config` and
:meth:`set_host_keys`.  Every guest gets ``host.*`` (shared) plus its own ``vm.*`` keys; a change
bumps that guest's ``generation`` and pushes the new snapshot to that guest only.

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
from hostkv.hostkvd import VERSION, config, hostvalues
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
        self.host_values = self._check_host_values(hostvalues.host_values(self.config, hostname))
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

    def add_channel(self, key, path, vm_values=None, label=None):
        """Serve the guest channel socket at ``path`` under ``key`` (idempotent)."""
        channel = self.channels.get(key)
        if channel is None:
            channel = Channel(key, path, lambda: channel.snapshot, label, self.server_name)
            self.channels[key] = channel
            if vm_values:
                channel.vm_values = self._checked_vm_values(key, vm_values, {})
            self._refresh(channel, push=False)
            log.info("%s: serving %s", channel.label, path)
            channel.start()
            return channel
        if label:
            channel.label = label
        if vm_values is not None:
            self.set_vm_values(key, vm_values)
        if path != channel.path or channel.state == "closed":
            log.info("%s: channel moved to %s", channel.label, path)
            asyncio.ensure_future(channel.set_path(path))
        return channel

    async def remove_channel(self, key):
        channel = self.channels.pop(key, None)
        if channel is not None:
            log.info("%s: no longer served", channel.label)
            await channel.close()

    def set_vm_values(self, key, values):
        """Replace the guest's vm.* keys; pushes to that guest only, and only if they changed."""
        channel = self.channels.get(key)
        if channel is None:
            raise KeyError(key)
        new = self._checked_vm_values(key, values, channel.vm_values)
        if new != channel.vm_values:
            channel.vm_values = new
            self._refresh(channel)

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
            new_values = self._check_host_values(hostvalues.host_values(new_config, self._hostname))
        except (config.ConfigError, protocol.ProtocolError) as err:
            log.error("config not reloaded, keeping the running one: %s", err)
            return False, str(err)
        self.config = new_config
        changed = new_values != self.host_values
        self.host_values = new_values
        pushed = self._refresh_all()
        log.info("config reloaded from %s: %s, pushed to %d guest(s)", self.config_path,
                 "host values changed" if changed else "no change", pushed)
        return True, "reloaded; pushed to %d guest(s)" % pushed

    def set_host_keys(self, set_values=None, unset=()):
        """Persist host.* changes in the config file (atomically), then reload and push."""
        config.update_host_keys(self.config_path, set_values, unset)
        return self.reload_config()

    def _check_host_values(self, values):
        return check_host_values(values)

    # ------------------------------------------------------------------ snapshots

    def _next_generation(self):
        self._generation = max(self._generation + 1, int(time.time() * 1000))
        return self._generation

    def _refresh(self, channel, push=True):
        """Rebuild ``channel``'s snapshot; bump generation and push if its content changed."""
        values = dict(self.host_values)
        values.update(channel.vm_values)
        old = channel.snapshot
        if old is not None and old.values == values and old.host_id == self.host_id:
            return False
        snap = protocol.Snapshot(self.host_id, self._next_generation(), values)
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
        return {
            "server": self.server_name, "pid": os.getpid(), "host_id": self.host_id,
            "config": self.config_path, "started": self.started,
            "host_values": dict(self.host_values),
            "channels": [ch.status() for ch in self.channels.values()],
        }

    async def close(self):
        for key in list(self.channels):
            await self.remove_channel(key)
