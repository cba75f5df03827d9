"""A domain's vm.* keys: the hostkv element of its libvirt metadata (namespace domain_xml.NS).

A running domain has two views, ``live`` and ``config`` (the persistent definition); a change is
merged into each view that exists (config first, then live - hostkvd reacts to the live change),
so keys set only in one view are kept.  Values are validated before anything is written.
"""

from hostkv.common import domain_xml, entries


def views(dom):
    """``[(name, flags)]``: the views of ``dom`` that exist (live if running, config if persistent)."""
    import libvirt
    out = []
    if dom.isPersistent():
        out.append(("config", libvirt.VIR_DOMAIN_AFFECT_CONFIG))
    if dom.isActive():
        out.append(("live", libvirt.VIR_DOMAIN_AFFECT_LIVE))
    return out


def read(dom, flags):
    """``(values, problems)`` of one view (``flags`` = VIR_DOMAIN_AFFECT_LIVE or _CONFIG)."""
    import libvirt
    try:
        text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, domain_xml.NS, flags)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return {}, []
        raise
    return domain_xml.parse_metadata_element(text)


def write(dom, values, flags):
    import libvirt
    if values:
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, domain_xml.metadata_element(values),
                        domain_xml.NS_PREFIX, domain_xml.NS, flags)
    else:
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, None, None, domain_xml.NS, flags)


def get(dom, config=False):
    """The values hostkvd serves (live view of a running domain), or the config view."""
    import libvirt
    if config or not dom.isActive():
        return read(dom, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    return read(dom, libvirt.VIR_DOMAIN_AFFECT_LIVE)


def set_keys(dom, values):
    """Merge ``values`` (vm.* keys) into every view; returns ``[(view, problems_dropped)]``."""
    values = entries.validate_entries(values, scope="vm")
    done = []
    for name, flags in views(dom):
        current, problems = read(dom, flags)
        current.update(values)
        if len(current) > entries.MAX_KEYS:
            raise entries.EntryError("too-many-keys", "%s would have %d vm keys, the limit is %d"
                                     % (dom.name(), len(current), entries.MAX_KEYS))
        write(dom, current, flags)
        done.append((name, problems))
    return done


def unset_keys(dom, keys):
    """Remove ``keys`` from every view; KeyError names keys set in no view (then nothing changes)."""
    per_view = [(name, flags) + read(dom, flags) for name, flags in views(dom)]
    missing = [k for k in keys if not any(k in values for _n, _f, values, _p in per_view)]
    if missing:
        raise KeyError("not set on %s: %s" % (dom.name(), ", ".join(missing)))
    done = []
    for name, flags, values, problems in per_view:
        if any(k in values for k in keys):
            write(dom, dict((k, v) for k, v in values.items() if k not in keys), flags)
            done.append((name, problems))
    return done
