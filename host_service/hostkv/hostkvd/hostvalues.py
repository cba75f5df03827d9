"""The host.* values every guest on this host sees: built-ins plus the configured keys.

Built-ins (unless ``publish_hostname = no``):
  host.hostname  the kernel's host name (``socket.gethostname()``)
  host.fqdn      the host name if it has a dot, else the first dotted alias of it in /etc/hosts,
                 else the host name.  Never a DNS query: hostkvd sends no network traffic.
Key sources (hostkvd/keysources/, e.g. Cobbler's ``hostkv_host_*``) override built-ins; configured
keys (the ``[host]`` section, ``hostkvctl host set``) override both.
"""

import socket

HOSTS_FILE = "/etc/hosts"


def fqdn(hostname, hosts_file=HOSTS_FILE):
    if "." in hostname:
        return hostname
    try:
        with open(hosts_file, encoding="utf-8", errors="replace") as f:
            for line in f:
                names = line.split("#", 1)[0].split()[1:]
                if hostname in names:
                    for name in names:
                        if name.startswith(hostname + "."):
                            return name
    except OSError:
        pass
    return hostname


def builtin_values(hostname=None, hosts_file=HOSTS_FILE):
    hostname = hostname or socket.gethostname()
    return {"host.hostname": hostname, "host.fqdn": fqdn(hostname, hosts_file)}


def host_values(config, hostname=None):
    """All host.* values for ``config`` (a config.Config)."""
    return layered_values(config, hostname)[0]


def layered_values(config, hostname=None, keysource_values=()):
    """``(values, origins)``: built-ins < each key source's values < ``config``'s [host] keys;
    ``origins`` maps every key to ``builtin``, the key source's name, or ``config``.
    ``keysource_values`` is ``[(name, {host.key: value})]`` in precedence order (last wins)."""
    layers = [("builtin", builtin_values(hostname) if config.publish_hostname else {})]
    layers += list(keysource_values) + [("config", config.host_values)]
    values, origins = {}, {}
    for origin, layer in layers:
        for key, value in layer.items():
            values[key] = value
            origins[key] = origin
    return values, origins
