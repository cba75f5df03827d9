"""A simulated host's private /etc/hosts: it names that host, and nothing that resolves outward.

Why: a namespace that plays a host (tests/harness/libvirt_hosts.py, hostkvd under
hostkvd_proc.uts_prefix) has its own UTS host name but, without this, the machine's /etc/hosts and
resolver: libvirtd's getaddrinfo(<its host name>) then goes out as a DNS query.  With a file that
names the host (loopback addresses only, as the Debian installer writes it), "files" in
nsswitch.conf answers and no query leaves the machine.

    hosts_text("hostkv-test-a")     # the file's content
    BIND_SH                         # sh: bind-mounts the file $HOSTS_FILE over /etc/hosts
                                    # (run inside the host's private mount namespace)
"""

BIND_SH = 'mount --bind "$HOSTS_FILE" /etc/hosts'


def hosts_text(hostname):
    """/etc/hosts for a host named ``hostname`` (its short name too if it is dotted)."""
    names = hostname if "." not in hostname else "%s %s" % (hostname, hostname.split(".", 1)[0])
    return ("127.0.0.1\tlocalhost\n"
            "127.0.1.1\t%s\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n" % names)


def write_hosts(path, hostname):
    """Write :func:`hosts_text` to ``path`` (world-readable: QEMU and libvirt's helpers read it)."""
    with open(path, "w") as f:
        f.write(hosts_text(hostname))
    import os
    os.chmod(path, 0o644)
    return path
