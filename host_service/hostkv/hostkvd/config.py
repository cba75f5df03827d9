"""hostkvd's config file: an INI-like format whose every error names the file and line.

    # comment lines start with '#' or ';'
    [daemon]
    publish_hostname = yes     # optional; 'no' keeps host.hostname/host.fqdn out of guests
    host_id = rack12-node3     # optional; default: libvirt's host UUID or one derived from the host
    [host]
    host.rack = r12
    host.note = "  a JSON string keeps leading spaces, \\n newlines and \\"quotes\\""

Values are the rest of the line after '=', stripped; a value that starts with '"' is parsed as a
JSON string.  There are no inline comments in values ('#' is a normal character there).
Edits (:func:`update_host_keys`) rewrite the file atomically (temp file, fsync, rename), keep
every comment and unrelated line, and validate before anything is written.
"""

import json
import os
import tempfile

from hostkv import protocol

DEFAULT_PATH = "/etc/hostkv/hostkvd.conf"
_BOOL = {"yes": True, "true": True, "on": True, "1": True,
         "no": False, "false": False, "off": False, "0": False}
DAEMON_OPTIONS = ("publish_hostname", "host_id")


class ConfigError(ValueError):
    """A config file that cannot be used; the message names path and line."""


class Config(object):
    """A parsed config: ``host_values`` (host.* keys), ``publish_hostname``, ``host_id`` (or None)."""

    def __init__(self, host_values=None, publish_hostname=True, host_id=None, path=None):
        self.host_values = dict(host_values or {})
        self.publish_hostname = publish_hostname
        self.host_id = host_id
        self.path = path

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
             and all(c >= " " and c != "\x7f" for c in value))
    return value if plain else json.dumps(value, ensure_ascii=False)


def parse(text, path="<config>"):
    """Parse config text; raise ConfigError naming ``path:line`` for the first problem."""
    cfg = Config(path=path)
    section = None
    for lineno, line in enumerate(text.splitlines(), 1):
        where = "%s:%d" % (path, lineno)
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.startswith("["):
            if not stripped.endswith("]"):
                raise ConfigError("%s: section header must end with ']': %s" % (where, stripped[:60]))
            section = stripped[1:-1].strip()
            if section not in ("daemon", "host"):
                raise ConfigError("%s: unknown section [%s] (known: [daemon], [host])" % (where, section[:40]))
            continue
        if "=" not in stripped:
            raise ConfigError("%s: expected 'key = value', got %r" % (where, stripped[:60]))
        name, raw = stripped.split("=", 1)
        name = name.strip()
        value = _parse_value(raw, where)
        if section is None:
            raise ConfigError("%s: %r is outside any section ([daemon] or [host])" % (where, name[:60]))
        if section == "daemon":
            if name == "publish_hostname":
                if value.lower() not in _BOOL:
                    raise ConfigError("%s: publish_hostname must be yes or no, not %r" % (where, value[:20]))
                cfg.publish_hostname = _BOOL[value.lower()]
            elif name == "host_id":
                try:
                    cfg.host_id = protocol.validate_host_id(value)
                except protocol.ProtocolError as err:
                    raise ConfigError("%s: %s" % (where, err))
            else:
                raise ConfigError("%s: unknown option %r in [daemon] (known: %s)"
                                  % (where, name[:40], ", ".join(DAEMON_OPTIONS)))
            continue
        try:
            protocol.validate_key(name)
            if not name.startswith("host."):
                raise protocol.ProtocolError("bad-scope", "only host.* keys belong in [host], not %r" % name)
            protocol.validate_value(name, value)
        except protocol.ProtocolError as err:
            raise ConfigError("%s: %s" % (where, err))
        if name in cfg.host_values:
            raise ConfigError("%s: %s is set twice" % (where, name))
        cfg.host_values[name] = value
    if len(cfg.host_values) > protocol.MAX_KEYS - 2:
        raise ConfigError("%s: %d host keys, the limit is %d" % (path, len(cfg.host_values), protocol.MAX_KEYS - 2))
    return cfg


def load(path):
    """Load ``path``; a missing file is an empty config (built-ins only)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return Config(path=path)
    except UnicodeDecodeError as err:
        raise ConfigError("%s: not UTF-8 text (%s)" % (path, err))
    return parse(text, path)


def atomic_write(path, text, mode=0o644):
    """Replace ``path`` with ``text`` so readers see the old or the new file, never a mix."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def update_host_keys(path, set_values=None, unset=()):
    """Set and/or remove host.* keys in the config at ``path``, atomically; returns the new Config.

    Keeps comments and other lines.  Validates the result before writing: on any error nothing
    changes on disk and ConfigError/ProtocolError is raised.
    """
    set_values = dict(set_values or {})
    for key, value in set_values.items():
        protocol.validate_key(key)
        if not key.startswith("host."):
            raise protocol.ProtocolError("bad-scope", "only host.* keys can be set on the host, not %s" % key)
        protocol.validate_value(key, value)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    parse("\n".join(lines), path)  # refuse to edit a file that is already broken

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
            if name in unset:
                continue
            if name in remaining:
                out.append("%s = %s" % (name, format_value(remaining.pop(name))))
                continue
        out.append(line)
    if remaining and not seen_host:
        out.append("[host]")
    flush()
    text = "\n".join(out) + "\n"
    cfg = parse(text, path)
    remove_stale_temps(path)
    atomic_write(path, text)
    return cfg


def remove_stale_temps(path):
    """Remove temp files a killed :func:`atomic_write` of ``path`` left behind (``.NAME.XXXXXXXX``).

    Only for files with a single writer (hostkvd's config: hostkvctl edits it through hostkvd).
    """
    directory = os.path.dirname(os.path.abspath(path))
    prefix = ".%s." % os.path.basename(path)
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix) and len(name) == len(prefix) + 8:   # mkstemp's 8 random chars
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass
