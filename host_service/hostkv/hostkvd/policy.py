"""Privacy policy: which host.* keys (and which host id) one guest is given.

Each guest's policy is in its domain metadata (``<hostkv:policy host-keys="..."/>``, set with
``hostkvctl vm policy DOMAIN POLICY``), so it migrates with the guest and the destination applies
it before its first push; a guest without one gets the host's ``default_policy`` (hostkvd.conf
``[daemon]``, default ``all``: nothing changes unless asked).

  all     every host.* key, and the host id (libvirt's host UUID or ``host_id``): as before.
  opaque  host identity replaced: ``host.hostname`` and ``host.fqdn`` are left out, ``host.id``
          is this host's opaque id, and so is the snapshot's host id.  Other host.* keys (the
          config's, Cobbler's ``hostkv_host_*``) are still given: they are what the admin chose to
          publish.  Guests on the same host see the same opaque id (so a tenant can check
          anti-affinity), and a migration changes it; it reveals nothing else about the host.
  none    no host.* key at all; the snapshot's host id is opaque per host AND guest, so guests
          cannot even tell that they share a host (it still changes on migration, which a guest
          can observe anyway, and which the agent needs to tell hosts apart).

The opaque id is derived the way systemd's ``sd_id128_get_machine_app_specific()`` derives
application ids: HMAC-SHA256 keyed with ``/etc/machine-id`` (confidential by its man page) over
an application id and the host id, shaped as a UUID.  It is stable for the life of the host
install, needs no state file, and cannot be turned back into the host's name, UUID or
machine id.  ``opaque_host_id`` in hostkvd.conf replaces it (e.g. to keep it across a reinstall).
"""

import hashlib
import hmac
import logging
import uuid

from hostkv.common import domain_xml

log = logging.getLogger("hostkvd")

POLICIES = domain_xml.POLICIES
DEFAULT_POLICY = "all"
IDENTITY_KEYS = ("host.hostname", "host.fqdn")   # hostvalues' built-ins: what names the host
OPAQUE_KEY = "host.id"
APP_ID = b"hostkv opaque host id/1"
MACHINE_ID_PATH = "/etc/machine-id"


def machine_secret(path=MACHINE_ID_PATH):
    """The HMAC key: the machine id (empty if unreadable, logged once by :class:`Privacy`)."""
    try:
        with open(path, "rb") as f:
            return f.read().strip()
    except OSError:
        return b""


def _uuid_of(secret, *parts):
    digest = hmac.new(secret, b"\0".join(p.encode("utf-8") if isinstance(p, str) else p for p in parts),
                      hashlib.sha256).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


class Privacy(object):
    """Applies a policy to the host's values for one guest (pure, apart from reading the secret once)."""

    def __init__(self, opaque_host_id=None, secret=None):
        self.override = opaque_host_id
        self.secret = machine_secret() if secret is None else secret
        if not self.secret and not opaque_host_id:
            log.warning("%s is unreadable: opaque host ids are derived from the host id alone "
                        "(set opaque_host_id in hostkvd.conf)", MACHINE_ID_PATH)

    def host_opaque_id(self, host_id):
        """This host's opaque id (policy ``opaque``)."""
        return self.override or _uuid_of(self.secret, APP_ID, "host", host_id)

    def guest_opaque_id(self, host_id, guest_key):
        """The host id a ``none`` guest is given: opaque per host and guest."""
        return _uuid_of(self.secret, APP_ID, "guest", self.host_opaque_id(host_id), guest_key)

    def apply(self, policy, host_values, host_id, guest_key):
        """``(host values, host id)`` a guest under ``policy`` is given."""
        if policy == "opaque":
            opaque = self.host_opaque_id(host_id)
            values = dict((k, v) for k, v in host_values.items() if k not in IDENTITY_KEYS)
            values[OPAQUE_KEY] = opaque
            return values, opaque
        if policy == "none":
            return {}, self.guest_opaque_id(host_id, guest_key)
        return dict(host_values), host_id
