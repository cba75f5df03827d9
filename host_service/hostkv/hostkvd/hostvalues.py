"""The host.* values every guest on this host sees: built-ins plus the configured keys.

Built-ins (unless ``publish_hostname = no``):
  host.hostname  the kernel's host name (``socket.gethostname()``)
  host.fqdn      the host name if it has a dot, else the first dotted alias of it in /etc/hosts,
                 else the host name.  Never a DNS query: hostkvd sends no network traffic.
Configured keys override built-ins of the same name.
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
    values = builtin_values(hostname) if config.publish_hostname else {}
    values.update(config.host_values)
    return values
