"""A domain's hostkv metadata (namespace domain_xml.NS): its vm.* keys, privacy policy, key-source links.

A running domain has two views, ``live`` and ``config`` (the persistent definition); a change is
merged into each view that exists (config first, then live - hostkvd reacts to the live change),
so what is set only in one view is kept.  Every edit reads hostkv's whole element
(:class:`hostkv.common.domain_xml.HostkvMetadata`), changes one part of it (local keys, the
policy, or one link) and writes it back: the other parts, and everything outside hostkv's
namespace, stay as they are.  Values are validated before anything is written.
"""

from hostkv.common import domain_xml, entries


class NotSet(KeyError):
    """Keys ``vm unset`` was asked to remove that no view sets locally (then nothing changes)."""


def views(dom):
    """``[(name, flags)]``: the views of ``dom`` that exist (live if running, config if persistent)."""
    import libvirt
    out = []
    if dom.isPersistent():
        out.append(("config", libvirt.VIR_DOMAIN_AFFECT_CONFIG))
    if dom.isActive():
        out.append(("live", libvirt.VIR_DOMAIN_AFFECT_LIVE))
    return out


def read_meta(dom, flags):
    """``(HostkvMetadata, problems)`` of one view (``flags`` = VIR_DOMAIN_AFFECT_LIVE or _CONFIG)."""
    import libvirt
    try:
        text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, domain_xml.NS, flags)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return domain_xml.HostkvMetadata(), []
        raise
    return domain_xml.parse_metadata(text)


def read(dom, flags):
    """``(served vm.* values, problems)`` of one view (local keys over source keys)."""
    meta, problems = read_meta(dom, flags)
    return meta.effective()[0], problems


def write_meta(dom, meta, flags):
    import libvirt
    if meta.is_empty():
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, None, None, domain_xml.NS, flags)
    else:
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, meta.to_xml(), domain_xml.NS_PREFIX,
                        domain_xml.NS, flags)


def write(dom, values, flags):
    """Replace the local keys of one view with ``values`` (the rest of the element stays)."""
    meta, _problems = read_meta(dom, flags)
    meta.keys = dict(values)
    write_meta(dom, meta, flags)


def get(dom, config=False):
    """``(HostkvMetadata, problems)`` hostkvd serves (live view of a running domain), or the config view."""
    import libvirt
    if config or not dom.isActive():
        return read_meta(dom, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    return read_meta(dom, libvirt.VIR_DOMAIN_AFFECT_LIVE)


def _edit(dom, change):
    """Apply ``change(meta, view)`` to every view and write the views it changed; returns
    ``[(view, problems_dropped)]`` of the views written."""
    done = []
    for name, flags in views(dom):
        meta, problems = read_meta(dom, flags)
        new = meta.copy()
        change(new, name)
        if new != meta or problems:
            write_meta(dom, new, flags)
        done.append((name, problems))
    return done


def _check_count(dom, meta):
    total = len(set(meta.keys).union(*[set(s.values) for s in meta.sources]))
    if total > entries.MAX_KEYS:
        raise entries.EntryError("too-many-keys", "%s would have %d vm keys, the limit is %d"
                                 % (dom.name(), total, entries.MAX_KEYS))


def set_keys(dom, values):
    """Merge ``values`` (vm.* keys) into the local keys of every view; returns ``[(view, problems_dropped)]``."""
    values = entries.validate_entries(values, scope="vm")

    def change(meta, _view):
        meta.keys.update(values)
        _check_count(dom, meta)
    return _edit(dom, change)


def unset_keys(dom, keys):
    """Remove local ``keys`` from every view; NotSet names keys set locally in no view (then
    nothing changes), and says where a key that only a source sets comes from."""
    per_view = [(name, flags) + read_meta(dom, flags) for name, flags in views(dom)]
    missing = [k for k in keys if not any(k in meta.keys for _n, _f, meta, _p in per_view)]
    if missing:
        notes = []
        for key in missing:
            for _n, _f, meta, _p in per_view:
                owners = [link for link in meta.sources if key in link.values]
                if owners:
                    notes.append("%s comes from %s: change it there (or `hostkvctl vm unlink %s`)"
                                 % (key, owners[0].describe(), dom.name()))
                    break
        raise NotSet("not set on %s: %s%s" % (dom.name(), ", ".join(missing),
                                               "".join("; " + n for n in notes)))
    return _edit(dom, lambda meta, _view: [meta.keys.pop(k, None) for k in keys])


def set_policy(dom, policy):
    """Set the privacy policy (``all``/``none``/``opaque``, or None: the host's default) in every view."""
    domain_xml.check_policy(policy)

    def change(meta, _view):
        meta.policy = policy
    return _edit(dom, change)


def link(dom, new):
    """Link ``dom`` to a key source (``new``: a SourceLink without values) in every view.  Keys
    already read through the same link stay; a link to somewhere else starts empty (hostkvd
    reads the record and stores its keys)."""
    domain_xml.check_metadata(domain_xml.HostkvMetadata(sources=[new]))

    def change(meta, _view):
        old = meta.source(new.type)
        keep = old.values if old is not None and old.identity() == new.identity() else {}
        attrs = dict(new.attrs)
        if old is not None and keep and "fetched" in old.attrs:
            attrs["fetched"] = old.attrs["fetched"]
        meta.set_source(domain_xml.SourceLink(new.type, attrs, keep))
    return _edit(dom, change)


def unlink(dom, source_type, keep_keys=False):
    """Remove the link of ``source_type`` from every view (KeyError if no view has one).  With
    ``keep_keys`` its keys become local keys (a local key of the same name stays as it was)."""
    if not any(read_meta(dom, flags)[0].source(source_type) for _n, flags in views(dom)):
        raise NotSet("%s is not linked to %s" % (dom.name(), source_type))

    def change(meta, _view):
        old = meta.source(source_type)
        if old is None:
            return
        if keep_keys:
            for key, value in old.values.items():
                meta.keys.setdefault(key, value)
        meta.remove_source(source_type)
    return _edit(dom, change)
