"""Validation of the hostkv options a Cobbler profile or system carries in ``autoinstall_meta``.

Options (every key starting with ``hostkv_`` belongs to hostkv; anything else is not looked at):

``hostkv_enabled``   boolean word: 1/true/yes/on or 0/false/no/off (any case).  When true, the
                     ``hostkv_agent`` snippet installs hostkv-agent in the kickstart's %post.
``hostkv_gpgcheck``  boolean word, default 0: ``gpgcheck`` of the generated hostkv.repo.
``hostkv_gpgkey``    optional URL of the key the RPMs are signed with (``gpgkey=`` of hostkv.repo);
                     http(s)/file/ftp, no whitespace or quotes (it is written into a shell script).
``hostkv_vm_<name>`` a per-guest value: key ``vm.<name>``, which must pass
                     ``hostkv.protocol.validate_key``/``validate_value`` (consumed by koan).

An unknown ``hostkv_*`` key is an error too (a typo such as ``hostkv_enable=1`` must not be
silently ignored).  :func:`check_meta` returns the list of human-readable problems, empty if none.

The wire limits come from ``hostkv.protocol`` when it is importable on the Cobbler server, else from
the copy that ``hostkv-cobbler install`` ships beside this file (``_lib/protocol.py``).
"""

import logging
import re

try:
    from hostkv import protocol  # the Cobbler server has hostkv on its path
except ImportError:  # pragma: no cover - depends on the server
    from . import protocol       # the private copy installed with the plugin

logging.getLogger().info("hostkv: protocol limits from %s", protocol.__file__)

PREFIX = "hostkv_"
VM_PREFIX = "hostkv_vm_"
BOOLEAN_OPTIONS = ("hostkv_enabled", "hostkv_gpgcheck")
URL_OPTIONS = ("hostkv_gpgkey",)
_URL_RE = re.compile(r"\A(?:https?|ftp|file)://[^\s'\"\\`$]+\Z")
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_bool(value):
    """Return True/False for a boolean word (or a bool), else raise ValueError."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise ValueError("%r is not a boolean word (use one of %s or %s)"
                     % (value, "/".join(TRUE_WORDS), "/".join(FALSE_WORDS)))


def vm_key(option):
    """``hostkv_vm_<name>`` -> ``vm.<name>`` (no validation)."""
    return "vm." + option[len(VM_PREFIX):]


def _one(option, value):
    """Problem text for one hostkv_* option, or None."""
    if isinstance(value, list):
        return "%s is given %d times; give it once" % (option, len(value))
    if value is None:
        return "%s has no value (write %s=VALUE)" % (option, option)
    if option in BOOLEAN_OPTIONS:
        try:
            parse_bool(value)
        except ValueError as err:
            return "%s=%s: %s" % (option, value, err)
        return None
    if option in URL_OPTIONS:
        if not isinstance(value, str) or not _URL_RE.match(value):
            return ("%s=%s: not a URL (http://, https://, ftp:// or file://; no spaces, quotes, "
                    "backslashes, backquotes or $)" % (option, value))
        return None
    if option.startswith(VM_PREFIX):
        key = vm_key(option)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        try:
            protocol.validate_key(key)
            protocol.validate_value(key, value)
        except protocol.ProtocolError as err:
            return "%s (hostkv key %s): %s" % (option, key, err)
        return None
    return ("%s is not a hostkv option (known: %s, %s<name>)"
            % (option, ", ".join(BOOLEAN_OPTIONS + URL_OPTIONS), VM_PREFIX))


def check_meta(meta):
    """Return the problems (list of str) in the ``hostkv_*`` entries of an autoinstall_meta dict."""
    if not isinstance(meta, dict):
        return []
    problems = []
    vm_keys = 0
    for option in sorted(k for k in meta if isinstance(k, str) and k.startswith(PREFIX)):
        problem = _one(option, meta[option])
        if problem:
            problems.append(problem)
        if option.startswith(VM_PREFIX):
            vm_keys += 1
    if vm_keys > protocol.MAX_KEYS:
        problems.append("%d hostkv_vm_* options, the limit is %d" % (vm_keys, protocol.MAX_KEYS))
    return problems


def vm_values(meta):
    """The per-guest ``vm.*`` values from a (valid) autoinstall_meta dict."""
    return dict((vm_key(k), str(v)) for k, v in meta.items()
                if isinstance(k, str) and k.startswith(VM_PREFIX))
