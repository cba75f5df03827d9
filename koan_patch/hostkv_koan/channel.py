"""The hostkv part of ``koan --virt``: the channel in the virt-install argv, the keys in metadata.

  * ``Koan.virt_net_install`` is wrapped to read and validate the guest's hostkv settings
    (:mod:`hostkv_koan.meta`) BEFORE anything is created: a bad key is an error, nothing is made.
  * ``koan.virtinstall.build_commandline`` is wrapped: when hostkv_enabled is true the argv gets
    ``--channel unix,target_type=virtio,name=org.hostkv.0`` appended (virt-install adds the
    virtio-serial controller); otherwise the argv is returned untouched (the very same list).
  * ``koan.qcreate.start_install`` is wrapped (for other creators, e.g. ``--image``, the
    ``virt_net_install`` wrapper does it when they return): after virt-install has defined (and
    started) the domain, its per-guest keys are written into the domain metadata with libvirt
    setMetadata (config, and live if running), in the format hostkvd reads
    (:func:`hostkv.common.domain_xml.metadata_element`); hostkvd picks the change up through
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
    """What build_commandline saw for a hostkv guest, for start_install to finish (one koan run)."""

    def __init__(self):
        self.record = None

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


def wrap_virt_net_install(orig):
    @functools.wraps(orig)
    def virt_net_install(self, profile_data):
        plan = plan_or_raise(profile_data)          # before any disk or domain exists
        PENDING.take()
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


def set_domain_keys(uri, name, values):
    """Write ``values`` ({vm.key: value}) into domain ``name``'s hostkv metadata on ``uri``."""
    import libvirt

    fragment = domain_xml.metadata_element(values)
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
    """Write the keys recorded by build_commandline into the domain it described."""
    uri, name, plan = rec
    if not plan.values:
        return
    if not uri.startswith(("qemu", "kvm")):
        uri = paths.LIBVIRT_URI      # imagecreate passes "import": virt-install's default
    try:
        set_domain_keys(uri, name, plan.values)
    except Exception as err:  # noqa: BLE001 - reported as koan's one-line error
        raise _info("hostkv: domain %s was created but its keys could not be set: %s; "
                    "set them with `hostkvctl vm set %s KEY=VALUE...`" % (name, err, name))
    print("- hostkv: set %d key(s) in the metadata of domain %s" % (len(plan.values), name))


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
