"""hostkv's Cobbler options: the ``hostkv_*`` keys of an ``autoinstall_meta``, read one way everywhere.

Three parts read these options and must agree: the Cobbler plugin's validator (which vetoes a bad
distro/profile/system), koan's extension (which adds the channel and the per-guest keys) and the
``hostkv_agent`` kickstart snippet (which installs the agent).  This module is the rule; the
snippet, which Cheetah cannot make import Python, carries a block generated from it
(:func:`snippet_block`; tests/cobbler checks the rendered snippet against this module).

Options:

``hostkv_enabled``    boolean word (below); true: the guest gets the org.hostkv.0 channel (koan)
                      and the agent (the snippet).  Unset, empty or a bare key: false.
``hostkv_gpgcheck``   boolean word, default false: ``gpgcheck`` of the generated hostkv.repo.
``hostkv_gpgkey``     optional URL of the RPM signing key: http(s)/ftp/file, no white space,
                      quotes, backslashes, backquotes or ``$`` (it is written into a shell script).
``hostkv_vm_<name>``  the per-guest key ``vm.<name>`` with this value (hostkv.common.entries rule).
``hostkv_host_<name>`` on the KVM host's own Cobbler system record: the key ``host.<name>`` for
                      every guest on that host (read live by hostkvd's Cobbler key source).

**Boolean words** (any case, surrounding white space ignored): true ``1 true yes on y``, false
``0 false no off n`` and the empty value (also a bare key, which is how Cobbler hands an empty
value to koan).  Python booleans are themselves.  Anything else is refused by every part with
the same message, :func:`bool_problem`.

**Values reach koan flattened.**  Cobbler 3.3 gives koan the blended autoinstall_meta as one
string (``cobbler.utils.dict_to_string``: values stripped, single-quoted only when they contain
a space, a false value written as a bare key), which koan reads back with shlex
(:func:`parse_flattened`).  A value that would not come back unchanged (leading/trailing white
space, quotes, backslashes, tabs or line breaks in a value without a space, a single quote in
one with a space) is refused by the validator (:func:`koan_view`), so no guest ever gets a
value Cobbler altered on the way.
"""

import re
import shlex

from . import entries

PREFIX = "hostkv_"
ENABLED = "hostkv_enabled"
GPGCHECK = "hostkv_gpgcheck"
GPGKEY = "hostkv_gpgkey"
VM_PREFIX = "hostkv_vm_"
HOST_PREFIX = "hostkv_host_"
KEY_PREFIXES = {VM_PREFIX: "vm", HOST_PREFIX: "host"}    # option prefix -> the scope it sets
BOOLEAN_OPTIONS = (ENABLED, GPGCHECK)
URL_OPTIONS = (GPGKEY,)

TRUE_WORDS = ("1", "true", "yes", "on", "y")
FALSE_WORDS = ("0", "false", "no", "off", "n", "")
WORDS_HINT = "use %s or %s, any case; empty means no" % ("/".join(TRUE_WORDS),
                                                         "/".join(w for w in FALSE_WORDS if w))
_BOOL_MESSAGE = "%s=%r is not a boolean word (" + WORDS_HINT + ")"
_URL_RE = re.compile(r"\A(?:https?|ftp|file)://[^\s'\"\\`$]+\Z")


class OptionError(ValueError):
    """An option hostkv cannot use; the message names the option."""


# ---------------------------------------------------------------- boolean words

def bool_word(value):
    """The word a boolean option's value is compared as: ``str(value).strip().lower()``,
    ``''`` for None (a bare key)."""
    return "" if value is None else str(value).strip().lower()


def bool_problem(option, value):
    """The one message for a value of ``option`` that is not a boolean word."""
    return _BOOL_MESSAGE % (option, "" if value is None else str(value))


def parse_bool(option, value):
    """True/False for a boolean word (or a bool); raise OptionError(:func:`bool_problem`)."""
    if isinstance(value, bool):
        return value
    word = bool_word(value)
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise OptionError(bool_problem(option, value))


# ---------------------------------------------------------------- per-guest keys

def vm_key(option):
    """``hostkv_vm_<name>`` -> ``vm.<name>`` (not validated)."""
    return "vm." + option[len(VM_PREFIX):]


def _prefix_of(option):
    for prefix in KEY_PREFIXES:
        if option.startswith(prefix):
            return prefix
    raise OptionError("%s is not a %s or %s option" % (option, VM_PREFIX, HOST_PREFIX))


def option_key(option):
    """``hostkv_vm_<name>`` -> ``vm.<name>``, ``hostkv_host_<name>`` -> ``host.<name>`` (not validated)."""
    prefix = _prefix_of(option)
    return "%s.%s" % (KEY_PREFIXES[prefix], option[len(prefix):])


def key_entry(option, value):
    """``(key, value)`` for one hostkv_vm_* / hostkv_host_* option, validated; OptionError names
    both.  None (a bare key, how Cobbler flattens an empty value) is the empty value; a number
    (Cobbler's YAML may load ``1`` as one) is its text; anything else that is not text (a list: the
    option given twice) is refused."""
    key = option_key(option)
    if value is None:
        value = ""
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise OptionError("%s (hostkv key %s): the value is a %s, not text (given twice?)"
                          % (option, key, type(value).__name__))
    try:
        entries.validate_entry(key, value, scope=KEY_PREFIXES[_prefix_of(option)])
    except entries.EntryError as err:
        raise OptionError("%s (hostkv key %s): %s" % (option, key, err))
    return key, value


def vm_entry(option, value):
    """``(vm.<name>, value)`` for one hostkv_vm_* option, as :func:`key_entry`."""
    if not option.startswith(VM_PREFIX):
        raise OptionError("%s is not a %s option" % (option, VM_PREFIX))
    return key_entry(option, value)


def key_values(meta, prefix):
    """The validated ``{key: value}`` of every ``prefix``* option (VM_PREFIX or HOST_PREFIX) of
    ``meta`` (a dict).  Raises OptionError for the first bad one (in option order), or when there
    are more than entries.MAX_KEYS."""
    out = dict(key_entry(option, meta[option]) for option in sorted(meta)
               if isinstance(option, str) and option.startswith(prefix))
    if len(out) > entries.MAX_KEYS:
        raise OptionError("%d %s* options, the limit is %d" % (len(out), prefix, entries.MAX_KEYS))
    return out


def vm_values(meta):
    """The validated ``{vm.<name>: value}`` of every hostkv_vm_* option of ``meta`` (a dict)."""
    return key_values(meta, VM_PREFIX)


def host_values(meta):
    """The validated ``{host.<name>: value}`` of every hostkv_host_* option of ``meta`` (a dict)."""
    return key_values(meta, HOST_PREFIX)


# ---------------------------------------------------------------- Cobbler -> koan transport

def flatten(meta):
    """``meta`` (a dict) as Cobbler 3.3's ``utils.dict_to_string`` hands it to koan."""
    out = ""
    for key, value in meta.items():
        items = value if isinstance(value, list) else [value]
        if not value:
            out += "%s " % key
            continue
        for item in items:
            text = str(item).strip()
            out += ("%s='%s' " if " " in text else "%s=%s ") % (key, text)
    return out


def parse_flattened(meta):
    """koan's reading of Cobbler's flattened autoinstall_meta (str) or a dict: ``{key: value}``.

    A bare key maps to None; a key given more than once maps to a list (as Cobbler parses it)."""
    if meta is None or meta == "" or meta == "~" or meta == "<<inherit>>":
        return {}
    if isinstance(meta, dict):
        return dict(meta)
    if not isinstance(meta, str):
        raise OptionError("autoinstall_meta is a %s, expected text" % type(meta).__name__)
    try:
        tokens = shlex.split(meta)
    except ValueError as err:
        raise OptionError("autoinstall_meta does not parse (%s): %r" % (err, meta[:200]))
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


def koan_view(value):
    """The value koan reads for a hostkv_vm_* option Cobbler stores as ``value`` ("" for a bare
    key), or None if Cobbler's flattening makes it unreadable (e.g. an unbalanced quote)."""
    try:
        seen = parse_flattened(flatten({"k": value})).get("k")
    except OptionError:
        return None
    return "" if seen is None else seen


# ---------------------------------------------------------------- the whole check (Cobbler)

def option_problem(option, value):
    """The problem (str) with one ``hostkv_*`` option as Cobbler stores it, or None."""
    if isinstance(value, list):
        return "%s is given %d times; give it once" % (option, len(value))
    if option in BOOLEAN_OPTIONS:
        try:
            parse_bool(option, value)
        except OptionError as err:
            return str(err)
        return None
    if value is None:
        return "%s has no value (write %s=VALUE)" % (option, option)
    if option in URL_OPTIONS:
        if not isinstance(value, str) or not _URL_RE.match(value):
            return ("%s=%s: not a URL (http://, https://, ftp:// or file://; no spaces, quotes, "
                    "backslashes, backquotes or $)" % (option, value))
        return None
    if option.startswith(HOST_PREFIX):
        try:     # read live by hostkvd over XML-RPC (never flattened for koan): the entry rule only
            key_entry(option, value)
        except OptionError as err:
            return str(err)
        return None
    if option.startswith(VM_PREFIX):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        try:
            vm_entry(option, value)
        except OptionError as err:
            return str(err)
        seen = koan_view(value)
        if seen != value:
            return ("%s (hostkv key %s): Cobbler would hand this value to koan as %r, not as given "
                    "(it strips leading and trailing white space, and koan reads the value back "
                    "with shell quoting: no quotes, backslashes, tabs or line breaks unless the value "
                    "also holds a space, and then no single quote)"
                    % (option, vm_key(option), seen if seen is not None else "(unreadable)"))
        return None
    # NAME, not <name>: cobbler-web shows this message as HTML, where <name> vanishes
    return ("%s is not a hostkv option (known: %s, %sNAME, %sNAME)"
            % (option, ", ".join(BOOLEAN_OPTIONS + URL_OPTIONS), VM_PREFIX, HOST_PREFIX))


def check_meta(meta):
    """Every problem (list of str, empty if none) in the ``hostkv_*`` options of ``meta`` (a dict)."""
    if not isinstance(meta, dict):
        return []
    problems = []
    counts = dict((prefix, 0) for prefix in KEY_PREFIXES)
    for option in sorted(k for k in meta if isinstance(k, str) and k.startswith(PREFIX)):
        problem = option_problem(option, meta[option])
        if problem:
            problems.append(problem)
        for prefix in KEY_PREFIXES:
            counts[prefix] += option.startswith(prefix)
    for prefix in sorted(KEY_PREFIXES):
        if counts[prefix] > entries.MAX_KEYS:
            problems.append("%d %s* options, the limit is %d" % (counts[prefix], prefix, entries.MAX_KEYS))
    return problems


# ---------------------------------------------------------------- the kickstart snippet

SNIPPET_BEGIN = "## BEGIN generated from hostkv/common/options.py: do not edit by hand"
SNIPPET_END = "## END generated"


def snippet_block():
    """The Cheetah lines the ``hostkv_agent`` snippet carries between SNIPPET_BEGIN and _END.

    Regenerate with ``python3 -m hostkv.common.options --snippet kickstart_snippets/hostkv_agent``."""
    return "\n".join([
        SNIPPET_BEGIN,
        "#set $hostkv_true_words = %r" % (TRUE_WORDS,),
        "#set $hostkv_false_words = %r" % (FALSE_WORDS,),
        "#set $hostkv_true_text = %r" % ("/".join(TRUE_WORDS),),
        "#set $hostkv_bool_message = %r" % (_BOOL_MESSAGE,),
        SNIPPET_END,
    ]) + "\n"


def update_snippet(text):
    """``text`` (a snippet) with its generated block replaced by :func:`snippet_block`."""
    start = text.index(SNIPPET_BEGIN)
    end = text.index(SNIPPET_END, start) + len(SNIPPET_END) + 1
    return text[:start] + snippet_block() + text[end:]


if __name__ == "__main__":   # pragma: no cover - a maintainer's tool
    import sys
    if len(sys.argv) == 3 and sys.argv[1] == "--snippet":
        with open(sys.argv[2]) as f:
            old = f.read()
        new = update_snippet(old)
        if new != old:
            with open(sys.argv[2], "w") as f:
                f.write(new)
        print("%s: %s" % (sys.argv[2], "updated" if new != old else "up to date"))
    else:
        sys.stdout.write(snippet_block())
