"""Hostkvd: the host's values and the set of guest channels being served.

Channel sources (sources/) call :meth:`add_channel`, :meth:`remove_channel` and
:meth:`set_vm_values`; the control socket and SIGHUP call :meth:`reload_config` and
:meth:`set_host_keys`.  Every guest gets ``host.*`` (shared) plus its own ``vm.*`` keys; a change
bumps that guest's ``generation`` and pushes the new snapshot to that guest only.

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
import logging
import os
import socket
import time
import uuid

from hostkv import protocol
from hostkv.common import entries, sd_notify
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
        self.host_values = self._check_host_values(hostvalues.host_values(self.config, hostname))
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

    def add_channel(self, key, path, vm_values=None, label=None):
        """Serve the guest channel socket at ``path`` under ``key`` (idempotent)."""
        channel = self.channels.get(key)
        if channel is None:
            channel = Channel(key, path, lambda: channel.snapshot, label, self.server_name)
            channel.on_change = self._channel_changed
            self.channels[key] = channel
            if vm_values:
                channel.vm_values = self._checked_vm_values(key, vm_values, {})
            self._refresh(channel, push=False)
            log.info("%s: serving %s", channel.label, path)
            channel.start()
            self.update_status()
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
            self._logged_undeliverable.pop(key, None)
            await channel.close()
            self.update_status()

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
        prospective = config.Config(new_host, self.config.publish_hostname, self.config.host_id)
        over = self.guests_over_limit(hostvalues.host_values(prospective, self._hostname))
        if over:
            return False, ("refused, nothing changed: it would put %d guest(s) over a limit: %s"
                           % (len(over), "; ".join("%s (%s)" % item for item in over)))
        config.update_host_keys(self.config_path, set_values, unset)
        return self.reload_config()

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
        values = dict(self.host_values)
        values.update(channel.vm_values)
        old = channel.snapshot
        if old is not None and old.values == values and old.host_id == self.host_id:
            return False
        snap = protocol.Snapshot(self.host_id, self._next_generation(), values)
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
        return {
            "server": self.server_name, "pid": os.getpid(), "host_id": self.host_id,
            "config": self.config_path, "started": self.started,
            "host_values": dict(self.host_values),
            "channels": [ch.status() for ch in self.channels.values()],
            "source": self.source_status, "status_line": self.status_line(), "now": time.time(),
        }

    async def close(self):
        for key in list(self.channels):
            await self.remove_channel(key)
