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

The same element also records the guest's privacy policy (which host.* keys it sees) and its
links to key sources (the Cobbler system it came from, with the keys last read from it), modelled
by :class:`HostkvMetadata` (schema and precedence rule there); read it with
:func:`parse_metadata` / :func:`domain_metadata`, write it with :meth:`HostkvMetadata.to_xml`.

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

POLICIES = ("all", "none", "opaque")     # which host.* keys a guest sees (HostkvMetadata.policy)
LOCAL = "local"                          # the source name of keys set in <key> (hostkvctl vm set)
MAX_LINK_ATTR_BYTES = 1024
BOOKKEEPING_ATTRS = ("fetched",)         # link attributes a key source updates (not what it points at)
_ATTR_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz-")


class SourceLink(object):
    """One ``<hostkv:source type=...>`` element: a link to where some of the guest's keys come from.

    ``type`` names the key source (hostkvd/keysources/<type>.py, e.g. ``cobbler``); ``attrs`` are
    its link attributes (str -> str, lower-case names such as ``server``, ``system``); ``values``
    the vm.* keys last read from it (written by hostkvd, or by koan when it created the guest).
    """

    __slots__ = ("type", "attrs", "values")

    def __init__(self, type, attrs=None, values=None):
        self.type = type
        self.attrs = dict(attrs or {})
        self.values = dict(values or {})

    def __eq__(self, other):
        return (isinstance(other, SourceLink) and self.type == other.type
                and self.attrs == other.attrs and self.values == other.values)

    def __ne__(self, other):
        return not self == other

    def __repr__(self):
        return "SourceLink(%r, %r, %d keys)" % (self.type, self.attrs, len(self.values))

    def identity(self):
        """The attributes that say what the link points at (all but :data:`BOOKKEEPING_ATTRS`)."""
        return dict((k, v) for k, v in self.attrs.items() if k not in BOOKKEEPING_ATTRS)

    def describe(self):
        """``cobbler system=web1 server=http://...``: how status lines name the link."""
        return " ".join([self.type] + ["%s=%s" % kv for kv in sorted(self.identity().items())])


class HostkvMetadata(object):
    """The hostkv element of a domain's metadata, as one typed value.

    Schema (namespace :data:`NS`; libvirt keeps one element per namespace, so everything hostkv
    records about a guest lives in this one element and travels with it on live migration)::

        <hostkv:keys xmlns:hostkv="https://hostkv.org/xmlns/hostkv/1">
          <hostkv:key name="vm.owner">alice</hostkv:key>       local keys (hostkvctl vm set)
          <hostkv:policy host-keys="opaque"/>                   optional: all | none | opaque
          <hostkv:source type="cobbler" server="http://cobbler.example.com/cobbler_api"
                         system="web1" fetched="1767012345.25">
            <hostkv:key name="vm.role">db</hostkv:key>         keys last read from that source
          </hostkv:source>
        </hostkv:keys>

    **Precedence** (:meth:`effective`): a local key wins over the same key from a source (a key
    set on this host with ``hostkvctl vm set`` is a deliberate override; ``vm unset`` hands the
    key back to the source); between sources, the first element wins.  ``policy`` None means
    "the host's default" (hostkvd.conf ``default_policy``, itself ``all`` by default).

    Older readers (hostkv < 0.2) see only the local keys and report the other elements as ignored.
    """

    __slots__ = ("keys", "policy", "sources")

    def __init__(self, keys=None, policy=None, sources=None):
        self.keys = dict(keys or {})
        self.policy = policy
        self.sources = list(sources or [])

    def __eq__(self, other):
        return (isinstance(other, HostkvMetadata) and self.keys == other.keys
                and self.policy == other.policy and self.sources == other.sources)

    def __ne__(self, other):
        return not self == other

    def __repr__(self):
        return "HostkvMetadata(%d local keys, policy=%r, sources=%r)" % (
            len(self.keys), self.policy, self.sources)

    def copy(self):
        return HostkvMetadata(self.keys, self.policy,
                              [SourceLink(s.type, s.attrs, s.values) for s in self.sources])

    def source(self, type):
        """The :class:`SourceLink` of ``type``, or None."""
        for link in self.sources:
            if link.type == type:
                return link
        return None

    def set_source(self, link):
        """Replace (or add) the link of ``link.type``; ``link`` None is ignored."""
        for i, old in enumerate(self.sources):
            if old.type == link.type:
                self.sources[i] = link
                return
        self.sources.append(link)

    def remove_source(self, type):
        self.sources = [s for s in self.sources if s.type != type]

    def effective(self):
        """``(values, origins)``: the vm.* keys the guest is served and where each came from
        (``local`` or a source type), by the precedence rule above; at most entries.MAX_KEYS."""
        values, origins = {}, {}
        for origin, keys in [(LOCAL, self.keys)] + [(s.type, s.values) for s in self.sources]:
            for key in sorted(keys):
                if key not in values and len(values) < entries.MAX_KEYS:
                    values[key] = keys[key]
                    origins[key] = origin
        return values, origins

    def shadowed(self):
        """``{key: [(source type, value)]}``: source keys a higher-precedence key overrides."""
        _values, origins = self.effective()
        out = {}
        for link in self.sources:
            for key, value in sorted(link.values.items()):
                if origins.get(key) != link.type:
                    out.setdefault(key, []).append((link.type, value))
        return out

    def is_empty(self):
        return not self.keys and self.policy is None and not self.sources

    def to_xml(self, namespaced=False):
        """The element for ``dom.setMetadata(ELEMENT, xml, NS_PREFIX, NS, ...)`` (or, ``namespaced``,
        for a whole domain XML's ``<metadata>``).  Validates everything first (EntryError /
        DomainXMLError); every CR is written as ``&#13;``."""
        check_metadata(self)
        tag = (lambda local: "{%s}%s" % (NS, local)) if namespaced else (lambda local: local)
        root = ET.Element(tag(METADATA_ROOT))
        for name in sorted(self.keys):
            ET.SubElement(root, tag("key"), name=name).text = self.keys[name]
        if self.policy is not None:
            ET.SubElement(root, tag("policy"), {"host-keys": self.policy})
        for link in self.sources:
            attrs = {"type": link.type}
            attrs.update(link.attrs)
            elem = ET.SubElement(root, tag("source"), attrs)
            for name in sorted(link.values):
                ET.SubElement(elem, tag("key"), name=name).text = link.values[name]
        # ElementTree writes CR raw in text (and key names, [A-Za-z0-9._-], hold none): escape it.
        return ET.tostring(root, encoding="unicode").replace("\r", "&#13;")


def check_policy(policy):
    """``policy`` if it is one of :data:`POLICIES` (or None), else DomainXMLError."""
    if policy is not None and policy not in POLICIES:
        raise DomainXMLError("policy %r is not one of %s" % (str(policy)[:40], ", ".join(POLICIES)))
    return policy


def _check_link_attr(type, name, value):
    if not name or not set(name) <= _ATTR_NAME_CHARS or name == "type":
        raise DomainXMLError("source %s: attribute name %r must be lower-case letters and '-' "
                             "(and not 'type')" % (type, str(name)[:40]))
    if not isinstance(value, str) or entries.bad_char(value) or "\r" in value or "\n" in value \
            or "\t" in value or len(value.encode("utf-8", "surrogatepass")) > MAX_LINK_ATTR_BYTES:
        raise DomainXMLError("source %s: attribute %s must be one line of text of at most %d bytes"
                             % (type, name, MAX_LINK_ATTR_BYTES))


def check_metadata(meta):
    """Raise EntryError/DomainXMLError if ``meta`` (a HostkvMetadata) cannot be written as is."""
    entries.validate_entries(meta.keys, scope="vm")
    check_policy(meta.policy)
    seen = set()
    for link in meta.sources:
        if not isinstance(link.type, str) or not link.type or not set(link.type) <= _ATTR_NAME_CHARS:
            raise DomainXMLError("source type %r must be lower-case letters and '-'" % (link.type,))
        if link.type in seen:
            raise DomainXMLError("source %s is given twice" % link.type)
        seen.add(link.type)
        for name, value in link.attrs.items():
            _check_link_attr(link.type, name, value)
        entries.validate_entries(link.values, scope="vm")
    return meta


def _local(tag):
    return tag.rsplit("}", 1)[-1]


def _read_keys(elem, where, problems):
    values = {}
    for child in elem:
        if _local(child.tag) != "key":
            problems.append("ignored element <%s> in %s" % (_local(child.tag)[:40], where))
            continue
        name = child.get("name")
        value = child.text or ""
        try:
            entries.validate_entry(name, value, scope="vm")
        except entries.EntryError as err:
            problems.append("ignored %s key %r: %s" % (where, str(name)[:80], err))
            continue
        if name in values:
            problems.append("%s key %s is set twice; the first one wins" % (where, name))
            continue
        if len(values) >= entries.MAX_KEYS:
            problems.append("%s has more than %d keys; the rest are ignored" % (where, entries.MAX_KEYS))
            break
        values[name] = value
    return values


def _metadata_from_element(root):
    """``(HostkvMetadata, problems)`` of our element; bad parts are reported and left out."""
    problems = []
    if _local(root.tag) != METADATA_ROOT:
        return HostkvMetadata(), ["hostkv metadata root is <%s>, expected <%s>"
                                  % (_local(root.tag)[:40], METADATA_ROOT)]
    keys_parent = ET.Element("keys")
    meta = HostkvMetadata()
    for child in root:
        kind = _local(child.tag)
        if kind == "key":
            keys_parent.append(child)
        elif kind == "policy":
            policy = child.get("host-keys")
            if meta.policy is not None:
                problems.append("hostkv metadata policy is set twice; the first one wins")
            elif policy not in POLICIES:
                problems.append("ignored hostkv metadata policy host-keys=%r (known: %s)"
                                % (str(policy)[:40], ", ".join(POLICIES)))
            else:
                meta.policy = policy
        elif kind == "source":
            stype = child.get("type")
            where = "hostkv metadata source %s" % str(stype)[:40]
            attrs = dict((k, v) for k, v in child.attrib.items() if k != "type")
            link = SourceLink(stype, attrs, _read_keys(child, where, problems))
            try:
                check_metadata(HostkvMetadata(sources=meta.sources + [SourceLink(stype, attrs)]))
            except (DomainXMLError, entries.EntryError) as err:
                problems.append("ignored %s: %s" % (where, err))
                continue
            meta.sources.append(link)
        else:
            problems.append("ignored element <%s> in hostkv metadata" % kind[:40])
    meta.keys = _read_keys(keys_parent, "hostkv metadata", problems)
    return meta, problems


def parse_metadata(text):
    """Parse our metadata element (as ``dom.metadata(ELEMENT, NS)`` returns it) into
    ``(HostkvMetadata, problems)``.  Never raises for bad content: a guest's metadata is edited
    by hand and must not stop serving; what is broken is reported and left out."""
    if text is None or not text.strip():
        return HostkvMetadata(), []
    try:
        root = ET.fromstring(text)
    except ET.ParseError as err:
        return HostkvMetadata(), ["hostkv metadata does not parse: %s" % err]
    return _metadata_from_element(root)


def domain_metadata(xml):
    """``(HostkvMetadata, problems)`` of a whole domain XML (empty if it has no hostkv element)."""
    root = _parse(xml)
    meta = root.find("metadata")
    if meta is not None:
        for child in meta:
            if child.tag.startswith("{%s}" % NS):
                return _metadata_from_element(child)
    return HostkvMetadata(), []


def parse_metadata_element(text):
    """The served vm.* keys of our metadata element: ``(values, problems)`` (local keys over
    source keys, :meth:`HostkvMetadata.effective`)."""
    meta, problems = parse_metadata(text)
    return meta.effective()[0], problems


def metadata_from_domain(xml):
    """The served vm.* values in a whole domain XML: ``(values, problems)``."""
    meta, problems = domain_metadata(xml)
    return meta.effective()[0], problems


def metadata_element(values, namespaced=False):
    """The element holding only the local keys ``values`` (validated: vm.* keys only; raises
    EntryError), as :meth:`HostkvMetadata.to_xml`."""
    return HostkvMetadata(entries.validate_entries(values, scope="vm")).to_xml(namespaced)


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
