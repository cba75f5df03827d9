"""The hostkv part of ``koan --virt``: the channel in the virt-install argv, the keys in metadata.

  * ``Koan.virt_net_install`` is wrapped to read and validate the guest's hostkv settings
    (:mod:`hostkv_koan.meta`) BEFORE anything is created: a bad key is an error, nothing is made.
  * ``koan.virtinstall.build_commandline`` is wrapped: when hostkv_enabled is true the argv gets
    ``--channel unix,target_type=virtio,name=org.hostkv.0`` appended (virt-install adds the
    virtio-serial controller); otherwise the argv is returned untouched (the very same list).
  * ``koan.qcreate.start_install`` is wrapped (for other creators, e.g. ``--image``, the
    ``virt_net_install`` wrapper does it when they return): after virt-install has defined (and
    started) the domain, hostkv's metadata element is written with libvirt setMetadata (config,
    and live if running), in the format hostkvd reads
    (:class:`hostkv.common.domain_xml.HostkvMetadata`): a ``cobbler`` link naming the Cobbler
    server koan talked to and the system (or profile) the guest was created from, holding the
    per-guest keys as that link's keys - they came from Cobbler, so a hostkvd polling that
    server (``[cobbler]`` in hostkvd.conf) keeps them in line with later edits in Cobbler, and a
    local ``hostkvctl vm set`` still wins over them.  hostkvd picks the change up through
    libvirt's metadata-change event.

Errors are koan's ``InfoException`` so koan prints them as one line and exits 1.
"""

import functools
import inspect

from hostkv.common import domain_xml, paths
from hostkv_koan import meta

PORT_NAME = paths.PORT_NAME
CHANNEL_ARG = "unix,target_type=virtio,name=%s" % PORT_NAME


class _Pending(object):
    """What build_commandline saw for a hostkv guest, for start_install to finish (one koan run);
    ``link`` is the Cobbler link virt_net_install worked out."""

    def __init__(self):
        self.record = None
        self.link = None

    def take(self):
        rec, self.record = self.record, None
        return rec


PENDING = _Pending()


def _info(message):
    from koan.cexceptions import InfoException
    return InfoException(message.replace("%", "%%"))   # InfoException does ``value % {}``


def plan_or_raise(profile_data):
    try:
        return meta.plan_from_profile_data(profile_data)
    except meta.HostkvMetaError as err:
        raise _info("hostkv: %s" % err)


def server_url(koan):
    """The XML-RPC URL koan read the guest's data from (what it connected to, else --server/--port)."""
    proxy = getattr(koan, "xmlrpc_server", None)
    host = getattr(proxy, "_ServerProxy__host", None)
    handler = getattr(proxy, "_ServerProxy__handler", None)
    if host and handler:
        import xmlrpc.client
        secure = isinstance(getattr(proxy, "_ServerProxy__transport", None), xmlrpc.client.SafeTransport)
        return "%s://%s%s" % ("https" if secure else "http", host, handler)
    return "http://%s:%s/cobbler_api" % (koan.server, koan.port or 80)


def cobbler_link(koan, profile_data):
    """The ``cobbler`` SourceLink of the guest koan is creating (system or profile, and server)."""
    attrs = {"server": server_url(koan)}
    name = profile_data.get("name") if isinstance(profile_data, dict) else None
    if getattr(koan, "profile", None):
        attrs["profile"] = koan.profile
    elif getattr(koan, "system", None):
        attrs["system"] = name or koan.system
    else:
        return None
    link = domain_xml.SourceLink("cobbler", attrs)
    try:
        domain_xml.check_metadata(domain_xml.HostkvMetadata(sources=[link]))
    except domain_xml.DomainXMLError:
        return None                    # e.g. a name with a line break: keys become local ones
    return link


def wrap_virt_net_install(orig):
    @functools.wraps(orig)
    def virt_net_install(self, profile_data):
        plan = plan_or_raise(profile_data)          # before any disk or domain exists
        PENDING.take()
        PENDING.link = cobbler_link(self, profile_data) if plan.enabled else None
        if plan.enabled:
            if self.virt_type not in ("qemu", "kvm"):
                raise _info("hostkv: hostkv_enabled is set but virt type %r has no virtio-serial "
                            "channel (only qemu/kvm guests)" % (self.virt_type,))
            print("- hostkv: channel %s, keys: %s"
                  % (PORT_NAME, ", ".join("%s=%s" % kv for kv in sorted(plan.values.items()))
                     or "(none)"))
        result = orig(self, profile_data)
        rec = PENDING.take()          # a creator other than qcreate (e.g. koan --image)
        if rec is not None:
            finish(rec)
        return result
    return virt_net_install


def wrap_build_commandline(orig):
    sig = inspect.signature(orig)

    @functools.wraps(orig)
    def build_commandline(uri, *args, **kwargs):
        argv = orig(uri, *args, **kwargs)
        bound = sig.bind(uri, *args, **kwargs)
        plan = plan_or_raise(bound.arguments.get("profile_data"))
        if not plan.enabled:
            return argv
        PENDING.record = (uri, bound.arguments.get("name"), plan)
        return list(argv) + ["--channel", CHANNEL_ARG]
    return build_commandline


def metadata_for(values, link):
    """The HostkvMetadata koan writes: ``values`` as ``link``'s keys (or local keys, no link)."""
    if link is None:
        return domain_xml.HostkvMetadata(values)
    return domain_xml.HostkvMetadata(sources=[domain_xml.SourceLink(link.type, link.attrs, values)])


def set_domain_keys(uri, name, values, link=None):
    """Write ``values`` ({vm.key: value}) - as the keys of ``link`` if given - into domain
    ``name``'s hostkv metadata on ``uri``."""
    import libvirt

    fragment = metadata_for(values, link).to_xml()
    conn = libvirt.open(uri)
    try:
        dom = conn.lookupByName(name)
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG if dom.isPersistent() else 0
        if dom.isActive():
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, fragment, domain_xml.NS_PREFIX,
                        domain_xml.NS, flags)
    finally:
        conn.close()


def finish(rec):
    """Write the keys recorded by build_commandline (and the Cobbler link) into the domain it described."""
    uri, name, plan = rec
    link, PENDING.link = PENDING.link, None
    if not plan.values and link is None:
        return
    if not uri.startswith(("qemu", "kvm")):
        uri = paths.LIBVIRT_URI      # imagecreate passes "import": virt-install's default
    try:
        set_domain_keys(uri, name, plan.values, link)
    except Exception as err:  # noqa: BLE001 - reported as koan's one-line error
        raise _info("hostkv: domain %s was created but its keys could not be set: %s; "
                    "set them with `hostkvctl vm set %s KEY=VALUE...`" % (name, err, name))
    print("- hostkv: set %d key(s) in the metadata of domain %s%s" % (
        len(plan.values), name, "" if link is None else ", linked to %s" % link.describe()))


def wrap_start_install(orig):
    @functools.wraps(orig)
    def start_install(*args, **kwargs):
        PENDING.take()
        result = orig(*args, **kwargs)
        rec = PENDING.take()
        if rec is not None:
            finish(rec)
        return result
    return start_install
