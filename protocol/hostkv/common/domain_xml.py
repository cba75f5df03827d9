"""libvirt domain XML as hostkv reads and writes it: pure functions, no libvirt connection needed.

Used by hostkvd's libvirt channel source (which guest to serve, where its socket is, which vm.*
keys it has), by hostkvctl (metadata edits, enable/disable) and by hostkv-koan (the keys of a
guest it creates).  Every function takes/returns XML text; XML is parsed and built with
ElementTree, never pasted together from strings.

Per-guest keys live in the domain metadata, namespace :data:`NS` (libvirt stores it under the
prefix :data:`NS_PREFIX`)::

    <metadata>
      <hostkv:keys xmlns:hostkv="https://hostkv.org/xmlns/hostkv/1">
        <hostkv:key name="vm.role">web</hostkv:key>
      </hostkv:keys>
    </metadata>

Values go in and come out byte for byte, every character the value rule
(:mod:`hostkv.common.entries`) allows included: XML parsers turn a literal CR (and CR LF) into LF,
so :func:`metadata_element` writes every CR as the character reference ``&#13;`` (libvirt keeps
it through virDomainSetMetadata, its saved definition and XMLDesc: tests/libvirt checks this on
the real daemon).  Entries that break the rule are reported and left out on reading, refused on
writing (:class:`hostkv.common.entries.EntryError`).

Devices added by ``hostkvctl enable`` carry libvirt user aliases (:data:`CHANNEL_ALIAS`,
:data:`CONTROLLER_ALIAS`) so ``disable`` can remove exactly those and nothing else.
"""

import xml.etree.ElementTree as ET

from . import entries, paths

NS = "https://hostkv.org/xmlns/hostkv/1"
NS_PREFIX = "hostkv"
METADATA_ROOT = "keys"
CHANNEL_ALIAS = "ua-hostkv-channel"
CONTROLLER_ALIAS = "ua-hostkv-vserial"

ET.register_namespace(NS_PREFIX, NS)    # our elements serialise as hostkv:..., as libvirt stores them


class DomainXMLError(ValueError):
    """XML that is not a usable libvirt domain description."""


def _parse(xml):
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise DomainXMLError("domain XML does not parse: %s" % err)
    if root.tag != "domain":
        raise DomainXMLError("not a <domain> document (root is <%s>)" % root.tag)
    return root


def _device_text(elem):
    """One device element as XML text, without the whitespace that followed it."""
    tail, elem.tail = elem.tail, None
    try:
        return ET.tostring(elem, encoding="unicode")
    finally:
        elem.tail = tail


def _alias(elem):
    alias = elem.find("alias")
    return alias.get("name") if alias is not None else None


def find_channels(xml, port_name=paths.PORT_NAME):
    """All ``<channel>`` elements of ``xml`` whose virtio target is named ``port_name``.

    Returns a list of dicts: ``type`` (channel type, e.g. 'unix'), ``mode`` (source mode),
    ``path`` (source path or None: libvirt fills it in for running domains), ``alias``,
    ``state`` (guest side: 'connected'/'disconnected'/None).
    """
    root = _parse(xml)
    out = []
    for chan in root.findall("./devices/channel"):
        target = chan.find("target")
        if target is None or target.get("type") != "virtio" or target.get("name") != port_name:
            continue
        source = chan.find("source")
        out.append({
            "type": chan.get("type"),
            "mode": source.get("mode") if source is not None else None,
            "path": source.get("path") if source is not None else None,
            "alias": _alias(chan),
            "state": target.get("state"),
        })
    return out


def channel_socket_path(xml, port_name=paths.PORT_NAME):
    """The unix socket QEMU listens on for the ``port_name`` channel in (LIVE) ``xml``.

    Returns ``(path, problem)``: ``(path, None)`` for a servable channel, ``(None, None)`` when the
    domain has no such channel (never serve it), ``(None, reason)`` when it has one hostkvd can't
    serve (wrong type, QEMU connects instead of listening, no path yet).
    """
    chans = find_channels(xml, port_name)
    if not chans:
        return None, None
    chan = chans[0]
    if chan["type"] != "unix":
        return None, "channel %s is type=%r, only 'unix' can be served" % (port_name, chan["type"])
    if chan["mode"] not in (None, "bind"):
        return None, "channel %s has source mode=%r; hostkvd needs mode='bind'" % (port_name, chan["mode"])
    if not chan["path"]:
        return None, "channel %s has no socket path (domain not running?)" % port_name
    return chan["path"], None


def domain_identity(xml):
    """``(name, uuid)`` of the domain."""
    root = _parse(xml)
    return (root.findtext("name") or "").strip(), (root.findtext("uuid") or "").strip()


# ---------------------------------------------------------------- metadata

def parse_metadata_element(text):
    """Parse our metadata element (as from ``dom.metadata(ELEMENT, NS)`` or :func:`metadata_element`).

    Returns ``(values, problems)``: the valid vm.* keys, and one message per entry left out.
    Never raises for bad content: a guest's metadata is edited by hand and must not stop serving.
    """
    if text is None or not text.strip():
        return {}, []
    try:
        root = ET.fromstring(text)
    except ET.ParseError as err:
        return {}, ["hostkv metadata does not parse: %s" % err]
    return _values_from_element(root)


def _local(tag):
    return tag.rsplit("}", 1)[-1]


def _values_from_element(root):
    values, problems = {}, []
    if _local(root.tag) != METADATA_ROOT:
        return {}, ["hostkv metadata root is <%s>, expected <%s>" % (_local(root.tag)[:40], METADATA_ROOT)]
    for child in root:
        if _local(child.tag) != "key":
            problems.append("ignored element <%s> in hostkv metadata" % _local(child.tag)[:40])
            continue
        name = child.get("name")
        value = child.text or ""
        try:
            entries.validate_entry(name, value, scope="vm")
        except entries.EntryError as err:
            problems.append("ignored hostkv metadata key %r: %s" % (str(name)[:80], err))
            continue
        if name in values:
            problems.append("hostkv metadata key %s is set twice; the first one wins" % name)
            continue
        if len(values) >= entries.MAX_KEYS:
            problems.append("hostkv metadata has more than %d keys; the rest are ignored" % entries.MAX_KEYS)
            break
        values[name] = value
    return values, problems


def metadata_from_domain(xml):
    """The vm.* values in a whole domain XML: ``(values, problems)`` as :func:`parse_metadata_element`."""
    root = _parse(xml)
    meta = root.find("metadata")
    if meta is None:
        return {}, []
    for child in meta:
        if child.tag.startswith("{%s}" % NS):
            return _values_from_element(child)
    return {}, []


def metadata_element(values, namespaced=False):
    """The XML fragment for ``dom.setMetadata(ELEMENT, fragment, NS_PREFIX, NS, ...)``.

    ``values`` is validated (vm.* keys only) first; raises EntryError on bad input.  Every CR is
    written as ``&#13;`` so it survives XML end-of-line handling.  ``namespaced=True``: the
    element in our namespace (``<hostkv:keys xmlns:hostkv=...>``), for a whole domain XML's
    ``<metadata>`` (setMetadata adds the namespace itself).
    """
    values = entries.validate_entries(values, scope="vm")
    tag = (lambda local: "{%s}%s" % (NS, local)) if namespaced else (lambda local: local)
    root = ET.Element(tag(METADATA_ROOT))
    for name in sorted(values):
        ET.SubElement(root, tag("key"), name=name).text = values[name]
    # ElementTree writes CR raw in text (and key names, [A-Za-z0-9._-], hold none): escape it.
    return ET.tostring(root, encoding="unicode").replace("\r", "&#13;")


# ---------------------------------------------------------------- enable / disable

def channel_element(port_name=paths.PORT_NAME, alias=CHANNEL_ALIAS):
    """The ``<channel>`` element of a hostkv-style unix channel (libvirt picks the socket path)."""
    chan = ET.Element("channel", type="unix")
    ET.SubElement(chan, "source", mode="bind")
    ET.SubElement(chan, "target", type="virtio", name=port_name)
    if alias:
        ET.SubElement(chan, "alias", name=alias)
    return chan


def channel_device_xml(port_name=paths.PORT_NAME):
    """Device XML of the hostkv channel as ``hostkvctl enable`` adds it."""
    return ET.tostring(channel_element(port_name), encoding="unicode")


def controller_device_xml(index):
    """Device XML of a virtio-serial controller as ``hostkvctl enable`` adds it."""
    ctrl = ET.Element("controller", type="virtio-serial", index=str(int(index)))
    ET.SubElement(ctrl, "alias", name=CONTROLLER_ALIAS)
    return ET.tostring(ctrl, encoding="unicode")


def virtio_serial_controllers(xml):
    """Indexes (ints) of the domain's virtio-serial controllers."""
    root = _parse(xml)
    return [int(c.get("index", "0")) for c in root.findall("./devices/controller")
            if c.get("type") == "virtio-serial"]


class NeedsController(DomainXMLError):
    """A running domain without a virtio-serial controller: libvirt cannot hot-plug one."""


def plan_enable(xml, port_name=paths.PORT_NAME, live=False):
    """What ``enable`` must attach to the domain described by ``xml``, in order.

    Returns a list of ``(kind, device_xml)`` with kind 'controller' or 'channel'; empty when the
    channel is already there (enable is idempotent).  Raises DomainXMLError when the domain can't
    get one (not a QEMU/KVM domain, or a non-unix channel of that name exists), and
    NeedsController for a ``live`` view without a virtio-serial controller (libvirt - 9.0 at
    least - refuses to hot-plug one: "'virtio-serial' controller cannot be hot plugged").
    """
    root = _parse(xml)
    dtype = root.get("type")
    if dtype not in ("qemu", "kvm"):
        raise DomainXMLError("domain type %r has no virtio-serial (only qemu/kvm domains)" % dtype)
    chans = find_channels(xml, port_name)
    if chans:
        if chans[0]["type"] != "unix":
            raise DomainXMLError("domain already has a %s channel of type %r; remove it first"
                                 % (port_name, chans[0]["type"]))
        return []
    plan = []
    if not virtio_serial_controllers(xml):
        if live:
            raise NeedsController("the running domain has no virtio-serial controller and libvirt cannot "
                                  "hot-plug one")
        plan.append(("controller", controller_device_xml(0)))
    plan.append(("channel", channel_device_xml(port_name)))
    return plan


def plan_disable(xml, port_name=paths.PORT_NAME):
    """What ``disable`` must detach, in order: ``[(kind, device_xml)]``.

    The hostkv channel (whoever added it) and, if ``enable`` added it (our alias) and no other
    virtio-serial device would still need it, the controller.  Device XML is taken verbatim from
    ``xml`` so libvirt matches exactly that device.  Empty when there is nothing to remove.
    """
    root = _parse(xml)
    plan = []
    devices = root.find("devices")
    if devices is None:
        return plan
    removed = 0
    for chan in devices.findall("channel"):
        target = chan.find("target")
        if target is not None and target.get("type") == "virtio" and target.get("name") == port_name:
            plan.append(("channel", _device_text(chan)))
            removed += 1
    virtio_ports = [c for c in devices.findall("channel") + devices.findall("console")
                    if (c.find("target") is not None and c.find("target").get("type") == "virtio")]
    others = len(virtio_ports) - removed
    for ctrl in devices.findall("controller"):
        if ctrl.get("type") == "virtio-serial" and _alias(ctrl) == CONTROLLER_ALIAS and others == 0:
            plan.append(("controller", _device_text(ctrl)))
    return plan
