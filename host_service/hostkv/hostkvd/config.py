"""hostkvd's config file: an INI-like format whose every error names the file and line.

    # comment lines start with '#' or ';'
    [daemon]
    publish_hostname = yes     # optional; 'no' keeps host.hostname/host.fqdn out of guests
    host_id = rack12-node3     # optional; default: libvirt's host UUID or one derived from the host
    default_policy = all       # optional; a guest without its own policy sees all|none|opaque host keys
    opaque_host_id = ...       # optional; default: derived from /etc/machine-id (hostkvd/policy.py)
    [host]
    host.rack = r12
    row = 3                    # a bare name (no dot) is short for host.row, as in `hostkvctl host set`
    host.note = "  a JSON string keeps leading spaces, \\n newlines and \\"quotes\\""
    [cobbler]                  # optional: a key source's section (hostkvd/keysources/cobbler.py)
    server = cobbler.example.com

Lines end at LF (CR LF works too); values are the rest of the line after '=', stripped; a value
that starts with '"' is parsed as one JSON string.  There are no inline comments in values ('#'
is a normal character there).  Keys and values follow :mod:`hostkv.common.entries` (one rule
with the protocol, hostkvctl, koan and the Cobbler plugin); ``publish_hostname`` takes the
boolean words of :mod:`hostkv.common.options` (not empty).  Every value the rule allows
round-trips: :func:`format_value` writes plain text where that reads back unchanged and a JSON
string (with ``\\uXXXX`` for C1 controls and line/paragraph separators) otherwise.

Edits (:func:`update_host_keys`) rewrite the file atomically and durably
(:func:`hostkv.common.atomic.write_atomic`), keep every comment and unrelated line (and the
spelling of the keys they change), and validate before anything is written.

A key source's section (``[cobbler]``; :mod:`hostkv.hostkvd.keysources`) is parsed by that source
(``parse_options``), with the same ``path:line`` errors; ``Config.keysources`` holds the result.
"""

import json
import re

from hostkv.common import atomic, entries, options, paths
from hostkv import protocol
from hostkv.hostkvd import keysources, policy

DEFAULT_PATH = paths.HOSTKVD_CONFIG
DAEMON_OPTIONS = ("publish_hostname", "host_id", "default_policy", "opaque_host_id")
# Characters a plain (unquoted) value may not hold: controls, C1 controls, line/paragraph
# separators (an editor may break a line there); a quoted value writes them as \uXXXX.
_UNSAFE_RAW = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class ConfigError(ValueError):
    """A config file that cannot be used; the message names path and line."""


class Config(object):
    """A parsed config: ``host_values`` (host.* keys), ``publish_hostname``, ``host_id`` (or None)."""

    def __init__(self, host_values=None, publish_hostname=True, host_id=None, path=None):
        self.host_values = dict(host_values or {})
        self.publish_hostname = publish_hostname
        self.host_id = host_id
        self.path = path
        self.default_policy = "all"     # hostkvd/policy.py: all | none | opaque
        self.opaque_host_id = None
        self.keysources = {}            # key source name -> its parse_options() result

    def __eq__(self, other):
        return isinstance(other, Config) and self.__dict__ == other.__dict__


def _parse_value(raw, where):
    raw = raw.strip()
    if raw.startswith('"'):
        try:
            value = json.loads(raw)
        except ValueError as err:
            raise ConfigError("%s: bad quoted value: %s" % (where, err))
        if not isinstance(value, str):
            raise ConfigError("%s: a quoted value must be one JSON string" % where)
        return value
    return raw


def format_value(value):
    """The config-file spelling of ``value`` (quoted only when plain text would not round-trip)."""
    plain = (value == value.strip() and value != "" and not value.startswith('"')
             and not _UNSAFE_RAW.search(value))
    if plain:
        return value
    return _UNSAFE_RAW.sub(lambda m: "\\u%04x" % ord(m.group()), json.dumps(value, ensure_ascii=False))


def _lines(text):
    """The file's lines: split at LF only (a value may hold any other separator), CR LF accepted."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def host_key(name, where):
    """The full host.* key a [host] line's name stands for (bare names get host.), or ConfigError."""
    try:
        return entries.scoped_key(name, "host")
    except entries.EntryError as err:
        if err.code == "bad-scope":
            raise ConfigError("%s: only host.* keys belong in [host]: %s" % (where, err))
        raise ConfigError("%s: %s" % (where, err))


def _publish_hostname(value, where):
    word = options.bool_word(value)
    if word:
        try:
            return options.parse_bool("publish_hostname", value)
        except options.OptionError:
            pass
    raise ConfigError("%s: publish_hostname must be yes or no (boolean words: %s and %s), not %r"
                      % (where, "/".join(options.TRUE_WORDS), "/".join(w for w in options.FALSE_WORDS if w),
                         value[:20]))


def parse(text, path="<config>"):
    """Parse config text; raise ConfigError naming ``path:line`` for the first problem."""
    cfg = Config(path=path)
    section = None
    keysource_sections = keysources.sections()
    keysource_lines = {}          # section -> [(name, value, where)]
    for lineno, line in enumerate(_lines(text), 1):
        where = "%s:%d" % (path, lineno)
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.startswith("["):
            if not stripped.endswith("]"):
                raise ConfigError("%s: section header must end with ']': %s" % (where, stripped[:60]))
            section = stripped[1:-1].strip()
            if section not in ("daemon", "host") and section not in keysource_sections:
                raise ConfigError("%s: unknown section [%s] (known: %s)" % (where, section[:40], ", ".join(
                    "[%s]" % name for name in ["daemon", "host"] + sorted(keysource_sections))))
            if section in keysource_sections:
                if section in keysource_lines:
                    raise ConfigError("%s: section [%s] is given twice" % (where, section))
                keysource_lines[section] = []
            continue
        if "=" not in stripped:
            raise ConfigError("%s: expected 'key = value', got %r" % (where, stripped[:60]))
        name, raw = stripped.split("=", 1)
        name = name.strip()
        value = _parse_value(raw, where)
        if section is None:
            raise ConfigError("%s: %r is outside any section ([daemon] or [host])" % (where, name[:60]))
        if section in keysource_sections:
            keysource_lines[section].append((name, value, where))
            continue
        if section == "daemon":
            if name == "publish_hostname":
                cfg.publish_hostname = _publish_hostname(value, where)
            elif name in ("host_id", "opaque_host_id"):
                try:
                    setattr(cfg, name, protocol.validate_host_id(value))
                except protocol.ProtocolError as err:
                    raise ConfigError("%s: %s: %s" % (where, name, err))
            elif name == "default_policy":
                if value not in policy.POLICIES:
                    raise ConfigError("%s: default_policy must be one of %s, not %r"
                                      % (where, ", ".join(policy.POLICIES), value[:20]))
                cfg.default_policy = value
            else:
                raise ConfigError("%s: unknown option %r in [daemon] (known: %s)"
                                  % (where, name[:40], ", ".join(DAEMON_OPTIONS)))
            continue
        key = host_key(name, where)
        try:
            entries.validate_value(key, value)
        except entries.EntryError as err:
            raise ConfigError("%s: %s" % (where, err))
        if key in cfg.host_values:
            raise ConfigError("%s: %s is set twice" % (where, key))
        cfg.host_values[key] = value
    if len(cfg.host_values) > entries.MAX_KEYS - 2:
        raise ConfigError("%s: %d host keys, the limit is %d" % (path, len(cfg.host_values), entries.MAX_KEYS - 2))
    for section, items in sorted(keysource_lines.items()):
        name = keysource_sections[section]
        try:
            parsed = keysources.module(name).parse_options(items)
        except ValueError as err:
            raise ConfigError(str(err))
        if parsed is not None:
            cfg.keysources[name] = parsed
    return cfg


def load(path):
    """Load ``path``; a missing file is an empty config (built-ins only)."""
    try:
        with open(path, encoding="utf-8", newline="") as f:   # lines end at LF only: see _lines
            text = f.read()
    except FileNotFoundError:
        return Config(path=path)
    except UnicodeDecodeError as err:
        raise ConfigError("%s: not UTF-8 text (%s)" % (path, err))
    return parse(text, path)


def update_host_keys(path, set_values=None, unset=()):
    """Set and/or remove host.* keys in the config at ``path``, atomically; returns the new Config.

    ``set_values``/``unset`` name full host.* keys; a line of the file is matched by the key it
    stands for (``rack = ...`` is host.rack).  Keeps comments and other lines.  Validates the
    result before writing: on any error nothing changes on disk and ConfigError/EntryError is raised.
    """
    set_values = dict(set_values or {})
    for key, value in set_values.items():
        entries.validate_entry(key, value, scope="host")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    parse(text, path)  # refuse to edit a file that is already broken
    lines = _lines(text)

    out, section, seen_host = [], None, False
    remaining = dict(set_values)

    def flush():
        out.extend("%s = %s" % (k, format_value(v)) for k, v in sorted(remaining.items()))
        remaining.clear()

    for line in lines:
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            if section == "host":
                flush()
            section = stripped[1:-1].strip()
            seen_host = seen_host or section == "host"
        elif section == "host" and "=" in stripped and stripped[0] not in "#;":
            name = stripped.split("=", 1)[0].strip()
            key = entries.scoped_key(name, "host")      # the file parsed: the name is valid
            if key in unset:
                continue
            if key in remaining:
                out.append("%s = %s" % (name, format_value(remaining.pop(key))))
                continue
        out.append(line)
    if remaining and not seen_host:
        out.append("[host]")
    flush()
    text = "\n".join(out) + "\n"
    cfg = parse(text, path)
    atomic.remove_stale_temps(path)
    atomic.write_atomic(path, text, mode=0o644, makedirs=True)
    return cfg
