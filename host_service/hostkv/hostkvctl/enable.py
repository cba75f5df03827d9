"""``enable`` / ``disable``: hot-plug the hostkv channel into a guest, or take it out again.

enable (idempotent): for each view of the domain (live first, then the persistent config) attach
what :func:`domain_xml.plan_enable` says is missing - a virtio-serial controller only if the view
has none, then the ``org.hostkv.0`` unix channel - both tagged with hostkv's user aliases.  Nothing
else about the domain changes.  If any step fails, the steps already done are undone and
:class:`CannotChange` explains why.

disable: detach what :func:`domain_xml.plan_disable` lists (the channel; the controller only if
enable added it and nothing else uses it), live and config.  A live unplug completes when the
guest acknowledges it; we wait up to ``wait`` seconds and report 'pending' if it has not.
"""

import time

from hostkv.common import domain_xml, paths


class CannotChange(RuntimeError):
    """The domain can't be enabled/disabled; the message says why (nothing was changed)."""


def _views(dom, next_boot=False):
    """``[(view, flags, xml)]``: live first (if running, unless ``next_boot``), then config (if persistent)."""
    import libvirt
    out = []
    if dom.isActive() and not next_boot:
        out.append(("live", libvirt.VIR_DOMAIN_AFFECT_LIVE, dom.XMLDesc(0)))
    if dom.isPersistent():
        out.append(("config", libvirt.VIR_DOMAIN_AFFECT_CONFIG,
                    dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
    return out


def _alias_of(device_xml):
    import xml.etree.ElementTree as ET
    alias = ET.fromstring(device_xml).find("alias")
    return alias.get("name") if alias is not None else None


def _detach(dom, device_xml, flags):
    alias = _alias_of(device_xml)
    if alias:
        dom.detachDeviceAlias(alias, flags)
    else:
        dom.detachDeviceFlags(device_xml, flags)


def enable(dom, port_name=paths.PORT_NAME, next_boot=False):
    """Enable hostkv on ``dom``; returns ``[(view, [kinds added])]`` (empty lists: already enabled).

    ``next_boot``: change only the persistent definition (for a running domain without a
    virtio-serial controller, which libvirt cannot hot-plug; effective after its next cold start).
    """
    import libvirt
    done, added = [], []
    views = _views(dom, next_boot)
    if next_boot and not views:
        raise CannotChange("cannot enable hostkv on %s for the next boot: it has no persistent definition"
                           % dom.name())
    try:
        for view, flags, xml in views:
            try:
                plan = domain_xml.plan_enable(xml, port_name, live=(view == "live"))
            except domain_xml.NeedsController as err:
                raise CannotChange("cannot enable hostkv on %s without a reboot: %s. Nothing was changed. "
                                   "'hostkvctl enable --next-boot %s' adds the controller and the channel "
                                   "to the persistent definition (effective after the domain is shut "
                                   "down and started again)." % (dom.name(), err, dom.name()))
            for kind, device in plan:
                dom.attachDeviceFlags(device, flags)
                added.append((flags, device))
            done.append((view, [kind for kind, _ in plan]))
    except CannotChange:
        if added:
            _rollback(dom, added)
        raise
    except (libvirt.libvirtError, domain_xml.DomainXMLError) as err:
        undone = _rollback(dom, added)
        raise CannotChange("cannot enable hostkv on %s: %s%s" % (
            dom.name(), err.get_error_message() if isinstance(err, libvirt.libvirtError) else err,
            "" if not added else (" (undid the %d device(s) already added)" % len(added) if undone
                                  else " (and undoing the partial change failed: check the domain)")))
    return done


def _rollback(dom, added):
    import libvirt
    ok = True
    for flags, device in reversed(added):
        try:
            _detach(dom, device, flags)
        except libvirt.libvirtError:
            ok = False
    return ok


def disable(dom, port_name=paths.PORT_NAME, wait=10.0):
    """Disable hostkv on ``dom``; returns ``[(view, [kinds removed], pending)]``."""
    import libvirt
    done = []
    for view, flags, xml in _views(dom):
        plan = domain_xml.plan_disable(xml, port_name)
        removed = []
        try:
            for kind, device in plan:
                _detach(dom, device, flags)
                removed.append(kind)
        except libvirt.libvirtError as err:
            raise CannotChange("cannot disable hostkv on %s (%s view, removed so far: %s): %s"
                               % (dom.name(), view, ", ".join(removed) or "nothing", err.get_error_message()))
        pending = False
        if removed and view == "live":
            pending = not _wait_gone(dom, port_name, [d for _k, d in plan], wait)
        done.append((view, removed, pending))
    return done


def _wait_gone(dom, port_name, devices, wait):
    """Wait until the live XML no longer has the detached devices (the guest acknowledged)."""
    aliases = set(a for a in (_alias_of(d) for d in devices) if a)
    deadline = time.monotonic() + wait
    while True:
        xml = dom.XMLDesc(0)
        chans = domain_xml.find_channels(xml, port_name)
        present = set(c["alias"] for c in chans) | (
            {domain_xml.CONTROLLER_ALIAS} if domain_xml.CONTROLLER_ALIAS in xml else set())
        if not chans and not (aliases & present):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def is_enabled(dom, port_name=paths.PORT_NAME):
    """``{view: bool}``: does each view have the hostkv channel?"""
    return dict((view, bool(domain_xml.find_channels(xml, port_name))) for view, _f, xml in _views(dom))
