"""hostkv settings from a Cobbler object's blended ``autoinstall_meta`` (pure functions).

Cobbler 3.3 blends autoinstall_meta distro -> profile -> system (system wins) and hands it to koan
flattened by ``cobbler.utils.dict_to_string``: ``"k=v k2='v w' bare "`` (values with a space are
single-quoted, an empty value becomes a bare key).  The settings hostkv reads from it:

  hostkv_enabled=1|true|yes|on     the guest gets the org.hostkv.0 channel (0|false|no|off or
                                   unset: it does not)
  hostkv_vm_<name>=<value>         per-guest key ``vm.<name>`` = value (e.g. hostkv_vm_role=web ->
                                   vm.role=web), validated with hostkv.protocol

Other ``hostkv_*`` keys belong to other parts of hostkv (e.g. the kickstart snippets) and are
ignored here.  Every problem raises :class:`HostkvMetaError` naming the Cobbler key.
"""

import shlex

ENABLED_KEY = "hostkv_enabled"
VM_PREFIX = "hostkv_vm_"
_TRUE = ("1", "true", "yes", "y", "on")
_FALSE = ("0", "false", "no", "n", "off", "")


class HostkvMetaError(ValueError):
    """autoinstall_meta content hostkv cannot use; the message names the offending key."""


class HostkvPlan(object):
    """What hostkv does for one guest: ``enabled`` (bool) and ``values`` ({vm.key: value})."""

    def __init__(self, enabled, values):
        self.enabled = enabled
        self.values = values

    def __repr__(self):
        return "HostkvPlan(enabled=%r, values=%r)" % (self.enabled, self.values)


def parse_meta(meta):
    """Cobbler's flattened autoinstall_meta (str) or a dict -> {key: str value or None}.

    A key given more than once maps to a list (as Cobbler itself parses it)."""
    if meta is None or meta == "" or meta == "~" or meta == "<<inherit>>":
        return {}
    if isinstance(meta, dict):
        return dict(meta)
    if not isinstance(meta, str):
        raise HostkvMetaError("autoinstall_meta is a %s, expected text" % type(meta).__name__)
    try:
        tokens = shlex.split(meta)
    except ValueError as err:
        raise HostkvMetaError("autoinstall_meta does not parse (%s): %r" % (err, meta[:200]))
    out = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        value = value if sep else None
        if key in out:
            prev = out[key]
            out[key] = (prev if isinstance(prev, list) else [prev]) + [value]
        else:
            out[key] = value
    out.pop("", None)
    return out


def _truth(key, value):
    if isinstance(value, bool):
        return value
    text = "" if value is None else str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise HostkvMetaError("%s=%r: expected one of 1/true/yes/on or 0/false/no/off" % (key, value))


def plan_from_meta(meta):
    """The :class:`HostkvPlan` for a (flattened or dict) autoinstall_meta.

    Keys are validated only when hostkv is enabled (a disabled guest gets nothing from hostkv,
    so a stale key there cannot stop an install)."""
    from hostkv import protocol  # the shared contract: key syntax and value limits

    values = parse_meta(meta)
    raw = values.get(ENABLED_KEY)
    if isinstance(raw, list):
        raise HostkvMetaError("%s is set %d times in autoinstall_meta" % (ENABLED_KEY, len(raw)))
    enabled = _truth(ENABLED_KEY, raw) if ENABLED_KEY in values else False
    keys = {}
    if not enabled:
        return HostkvPlan(False, keys)
    for meta_key in sorted(values):
        if not meta_key.startswith(VM_PREFIX):
            continue
        value = values[meta_key]
        if isinstance(value, list):
            raise HostkvMetaError("%s is set %d times in autoinstall_meta" % (meta_key, len(value)))
        name = "vm." + meta_key[len(VM_PREFIX):]
        value = "" if value is None else str(value)
        try:
            protocol.validate_key(name)
            protocol.validate_value(name, value)
        except protocol.ProtocolError as err:
            raise HostkvMetaError("autoinstall_meta %s -> %s: %s" % (meta_key, name, err))
        keys[name] = value
    try:
        keys = protocol.validate_values(keys, scope="vm")
    except protocol.ProtocolError as err:
        raise HostkvMetaError("autoinstall_meta hostkv_vm_* keys: %s" % err)
    return HostkvPlan(True, keys)


def plan_from_profile_data(profile_data):
    """:func:`plan_from_meta` of koan's ``profile_data`` (autoinstall_meta, or ks_meta before 3.0)."""
    if not isinstance(profile_data, dict):
        return HostkvPlan(False, {})
    meta = profile_data.get("autoinstall_meta")
    if meta is None:
        meta = profile_data.get("ks_meta")
    return plan_from_meta(meta)
