"""What a hostkv key and value may be: the one rule every path enforces, with one message.

Contract (docs/PROTOCOL.md "Limits" states the same):

* A **key** is ``host.`` or ``vm.`` followed by one or more of ``[A-Za-z0-9._-]``, 1-128 bytes.
  Its scope is its first component: ``host.*`` keys are the host's (hostkvd's config), ``vm.*``
  keys one guest's (its libvirt domain metadata).
* A **value** is a string of at most 4096 bytes in UTF-8 whose every character is an XML 1.0
  character (the ``Char`` production): any Unicode text except the C0 control characters other
  than TAB, LF and CR, U+FFFE, U+FFFF and lone surrogates.  Per-guest values live in libvirt's XML,
  which cannot hold the others at all; one rule for both scopes keeps a value valid wherever it
  moves.  Every path delivers a valid value byte for byte (CR included) or refuses it: nothing is
  ever trimmed, normalised or truncated.
* At most 256 keys in one set (a guest's snapshot; a domain's metadata).
* **Bare-key scoping** (``scoped_key``): where the context gives the scope (``hostkvctl host
  set``, ``hostkvctl vm set DOMAIN``, the ``[host]`` section of hostkvd.conf) a name without a dot
  is short for a key of that scope (``rack`` -> ``host.rack``); a name with a dot is a full key
  and must be of that scope (so a typo such as ``hots.rack`` is an error, never a new key).

Every refusal is an :class:`EntryError` (a ValueError) with a machine-readable ``code`` (the
protocol's error codes: ``bad-key``, ``bad-scope``, ``bad-value``, ``value-too-large``,
``bad-values``, ``too-many-keys``) and a message that names the key and, for a bad character,
the character and its position.
"""

import re

SCOPES = ("host", "vm")
MAX_KEY_BYTES = 128
MAX_VALUE_BYTES = 4096
MAX_KEYS = 256

KEY_RULE = "'host.' or 'vm.' followed by [A-Za-z0-9._-]"
VALUE_RULE = ("values are XML 1.0 text: no control characters except tab, newline and carriage "
              "return, no U+FFFE or U+FFFF, no lone surrogates")

_KEY_RE = re.compile(r"\A(?:host|vm)\.[A-Za-z0-9._-]+\Z")
# The complement of XML 1.0's Char production within Python's str (code points <= U+10FFFF).
_BAD_CHAR_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


class EntryError(ValueError):
    """A key or value that breaks the rule; ``code`` is machine-readable, ``str()`` for humans."""

    def __init__(self, code, message):
        ValueError.__init__(self, message)
        self.code = code


def describe_char(char):
    """``U+0001 (a control character)``: how messages name a character."""
    point = ord(char)
    if 0xD800 <= point <= 0xDFFF:
        kind = "a lone surrogate"
    elif point in (0xFFFE, 0xFFFF):
        kind = "a non-character"
    elif point < 0x20 or point == 0x7F:
        kind = "a control character"
    else:
        return "U+%04X %r" % (point, char)
    return "U+%04X (%s)" % (point, kind)


def bad_char(value):
    """``(index, char)`` of the first character of ``value`` a value may not hold, else None."""
    match = _BAD_CHAR_RE.search(value)
    return (match.start(), match.group()) if match else None


def validate_key(key):
    """Return ``key`` if it is a valid key (any scope), else raise EntryError('bad-key')."""
    if not isinstance(key, str):
        raise EntryError("bad-key", "key must be a string, not %s" % type(key).__name__)
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise EntryError("bad-key", "key is longer than %d bytes" % MAX_KEY_BYTES)
    if not _KEY_RE.match(key):
        raise EntryError("bad-key", "key %r must be %s" % (key[:MAX_KEY_BYTES], KEY_RULE))
    return key


def check_scope(key, scope):
    """Return ``key`` (already valid) if it is in ``scope``, else raise EntryError('bad-scope')."""
    if scope not in SCOPES:
        raise ValueError("unknown scope %r" % (scope,))
    if not key.startswith(scope + "."):
        raise EntryError("bad-scope", "%s is not a %s.* key" % (key, scope))
    return key


def validate_value(key, value):
    """Return ``value`` if it is a valid value for ``key``, else raise EntryError.

    ``bad-value``: not a string, or a character outside the rule (named, with its position
    counted from 1); ``value-too-large``: over MAX_VALUE_BYTES in UTF-8."""
    if not isinstance(value, str):
        raise EntryError("bad-value", "value of %s must be a string, not %s" % (key, type(value).__name__))
    found = bad_char(value)
    if found is not None:
        index, char = found
        raise EntryError("bad-value", "value of %s has %s at character %d; %s"
                         % (key, describe_char(char), index + 1, VALUE_RULE))
    size = len(value.encode("utf-8"))
    if size > MAX_VALUE_BYTES:
        raise EntryError("value-too-large",
                         "value of %s is %d bytes, the limit is %d" % (key, size, MAX_VALUE_BYTES))
    return value


def validate_entry(key, value, scope=None):
    """Validate one key/value pair (and the key's scope if given); returns ``(key, value)``."""
    validate_key(key)
    if scope is not None:
        check_scope(key, scope)
    return key, validate_value(key, value)


def validate_entries(values, scope=None):
    """Validate a key -> value mapping (count, every key, its scope if given, every value).

    Returns a new plain dict; raises EntryError on the first offending entry."""
    if not isinstance(values, dict):
        raise EntryError("bad-values", "values must be an object")
    if len(values) > MAX_KEYS:
        raise EntryError("too-many-keys", "%d keys, the limit is %d" % (len(values), MAX_KEYS))
    out = {}
    for key, value in values.items():
        validate_entry(key, value, scope)
        out[key] = value
    return out


def scoped_key(name, scope):
    """The full key ``name`` stands for in ``scope`` (bare-key scoping, see the module doc).

    ``rack`` -> ``host.rack`` (scope host); ``vm.role`` stays ``vm.role`` (scope vm);
    ``vm.role`` in scope host, or ``hots.rack`` anywhere, raise EntryError."""
    if not isinstance(name, str):
        raise EntryError("bad-key", "key must be a string, not %s" % type(name).__name__)
    key = name if "." in name else "%s.%s" % (scope, name)
    validate_key(key)
    return check_scope(key, scope)
