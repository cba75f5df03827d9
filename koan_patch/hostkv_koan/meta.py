"""hostkv settings from a Cobbler object's blended ``autoinstall_meta`` (pure functions).

Cobbler 3.3 blends autoinstall_meta distro -> profile -> system (system wins) and hands it to koan
flattened by ``cobbler.utils.dict_to_string``: ``"k=v k2='v w' bare "``.  The options, the boolean
words and that transport are hostkv's shared rule, :mod:`hostkv.common.options` (the Cobbler
validator and the kickstart snippet follow the same rule); what koan takes from them:

  hostkv_enabled=<boolean word>    true: the guest gets the org.hostkv.0 channel (unset, empty or
                                   a false word: it does not; anything else is an error)
  hostkv_vm_<name>=<value>         per-guest key ``vm.<name>`` = value (e.g. hostkv_vm_role=web ->
                                   vm.role=web), validated with hostkv.common.entries

Other ``hostkv_*`` keys belong to other parts of hostkv (e.g. the kickstart snippets) and are
ignored here.  Every problem raises :class:`HostkvMetaError` naming the Cobbler key.
"""

from hostkv.common import options

HostkvMetaError = options.OptionError
ENABLED_KEY = options.ENABLED
VM_PREFIX = options.VM_PREFIX


class HostkvPlan(object):
    """What hostkv does for one guest: ``enabled`` (bool) and ``values`` ({vm.key: value})."""

    def __init__(self, enabled, values):
        self.enabled = enabled
        self.values = values

    def __repr__(self):
        return "HostkvPlan(enabled=%r, values=%r)" % (self.enabled, self.values)


def parse_meta(meta):
    """Cobbler's flattened autoinstall_meta (str) or a dict -> {key: str value or None}."""
    return options.parse_flattened(meta)


def _once(values, key):
    value = values.get(key)
    if isinstance(value, list):
        raise HostkvMetaError("%s is set %d times in autoinstall_meta" % (key, len(value)))
    return value


def plan_from_meta(meta):
    """The :class:`HostkvPlan` for a (flattened or dict) autoinstall_meta.

    Keys are validated only when hostkv is enabled (a disabled guest gets nothing from hostkv,
    so a stale key there cannot stop an install)."""
    values = parse_meta(meta)
    if not options.parse_bool(ENABLED_KEY, _once(values, ENABLED_KEY)):
        return HostkvPlan(False, {})
    for key in values:
        if key.startswith(VM_PREFIX):
            _once(values, key)
    return HostkvPlan(True, options.vm_values(values))


def plan_from_profile_data(profile_data):
    """:func:`plan_from_meta` of koan's ``profile_data`` (autoinstall_meta, or ks_meta before 3.0)."""
    if not isinstance(profile_data, dict):
        return HostkvPlan(False, {})
    meta = profile_data.get("autoinstall_meta")
    if meta is None:
        meta = profile_data.get("ks_meta")
    return plan_from_meta(meta)
