"""libvirt access for hostkvctl: open the connection, find a domain by name, UUID or id.

Errors become :class:`LibvirtUnavailable` (cannot connect) or :class:`NoSuchDomain`, with messages
meant for the terminal.
"""


class LibvirtUnavailable(RuntimeError):
    pass


class NoSuchDomain(LookupError):
    pass


def open_connection(uri):
    try:
        import libvirt
    except ImportError:
        raise LibvirtUnavailable("libvirt-python is not installed")
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # no duplicate messages on stderr
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as err:
        raise LibvirtUnavailable("cannot connect to libvirt at %s: %s" % (uri, err.get_error_message()))


def lookup(conn, ident):
    """The domain named ``ident`` (or with that UUID, or that numeric id)."""
    import libvirt
    for how in (conn.lookupByName, conn.lookupByUUIDString):
        try:
            return how(ident)
        except libvirt.libvirtError:
            pass
    if ident.isdigit():
        try:
            return conn.lookupByID(int(ident))
        except libvirt.libvirtError:
            pass
    raise NoSuchDomain("no domain %r on %s" % (ident, conn.getURI()))


def all_domains(conn):
    return sorted(conn.listAllDomains(0), key=lambda d: d.name())
