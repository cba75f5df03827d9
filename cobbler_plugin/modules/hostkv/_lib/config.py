"""The plugin's configuration file, ``/etc/hostkv/cobbler.conf`` (optional).

Format: ``key = value`` lines; ``#`` starts a comment line; blank lines are ignored.  Keys:

``rpm_dir``      where the hostkv RPMs to publish are found (default ``/usr/share/hostkv/rpms``)
``rpm_pattern``  which files in rpm_dir are published (glob, default ``hostkv-agent-*.noarch.rpm``)
``createrepo``   the createrepo_c command (default ``createrepo_c``, looked up in PATH)

A missing file means the defaults.  A malformed line or an unknown key raises :class:`ConfigError`
naming the file and the line number.
"""

import os

DEFAULT_PATH = "/etc/hostkv/cobbler.conf"
DEFAULTS = {
    "rpm_dir": "/usr/share/hostkv/rpms",
    "rpm_pattern": "hostkv-agent-*.noarch.rpm",
    "createrepo": "createrepo_c",
}


class ConfigError(ValueError):
    """A malformed configuration file; the message names the file and line."""


def parse(text, path="<config>"):
    """Parse the file's text; returns the full settings dict (defaults filled in)."""
    conf = dict(DEFAULTS)
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ConfigError("%s:%d: expected 'key = value', got %r" % (path, number, raw))
        key, value = (part.strip() for part in line.split("=", 1))
        if key not in DEFAULTS:
            raise ConfigError("%s:%d: unknown key %r (known: %s)"
                              % (path, number, key, ", ".join(sorted(DEFAULTS))))
        if not value:
            raise ConfigError("%s:%d: %s has an empty value" % (path, number, key))
        conf[key] = value
    return conf


def load(path=None):
    """Read ``path`` (default: $HOSTKV_COBBLER_CONF, else /etc/hostkv/cobbler.conf)."""
    path = path or os.environ.get("HOSTKV_COBBLER_CONF") or DEFAULT_PATH
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return dict(DEFAULTS)
    return parse(text, path)
