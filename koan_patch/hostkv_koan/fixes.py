"""The four koan 3.0.1 bugs against Cobbler 3.3, fixed by wrapping koan's own functions.

Each ``wrap_*`` takes koan's original function and returns the wrapper the hook installs in its
place; the wrapper calls the original for everything it does not fix.

  autoinstall  koan.app.Koan.get_data: Cobbler 3.3 sends ``autoinstall`` (a template name, e.g.
               "sample.ks") where koan reads ``autoinst`` (or, falling back, ``kickstart``, which
               Cobbler 3.3 also fills with the template name after a restart) as a URL ->
               "Cannot find install source in autoinst file, aborting."  Fix: unless
               ``autoinst`` already is a URL/path, set it to the object's rendered-autoinstall
               URL, http://<http_server>/cblr/svc/op/autoinstall/<profile|system>/<name>.
  port         koan.app.Koan.get_install_tree_from_autoinst: builds the kickstart URL from
               --server alone, so with --port=P it reads http://SERVER/... (port 80).  Fix: while
               it runs, koan's server is "SERVER:P".
  filesize     koan.app.Koan.calc_virt_filesize2: Cobbler 3.3 sends virt_file_size as a float
               (10.0); int("10.0") fails and koan silently uses a 1 GB disk.  Fix: a number that
               parses as a float is used (as an int when it is whole: 10.0 -> 10).
  bridge       koan.virtinstall._sanitize_nics: an interface's virt_bridge arrives as
               "<<inherit>>" and becomes ``--network bridge=<<inherit>>``.  Fix: "<<inherit>>"
               means "not set on the interface", so koan falls back to the profile's
               virt_bridge exactly as it does for an empty one.
"""

import functools
import math

INHERIT = "<<inherit>>"


def autoinstall_url(data, what):
    """The URL Cobbler serves the rendered autoinstall file of ``data`` (a profile/system) at."""
    return "http://%s/cblr/svc/op/autoinstall/%s/%s" % (data["http_server"], what, data["name"])


def _is_location(value):
    """True for what koan can read an autoinstall file from (a URL or an absolute path)."""
    return isinstance(value, str) and value.startswith(("http://", "https://", "nfs://", "file:", "/"))


def wrap_get_data(orig):
    @functools.wraps(orig)
    def get_data(self, what, name=None):
        data = orig(self, what, name)
        if name is not None and what in ("profile", "system") and isinstance(data, dict) \
                and not _is_location(data.get("autoinst")):
            # Cobbler 3.3: "autoinstall" (and, once cobblerd has reloaded its collections, a
            # legacy "kickstart") hold a TEMPLATE NAME such as "sample.ks", which koan would
            # try to read as a URL; the rendered file is served by Cobbler's svc app.
            template = data.get("autoinstall") or data.get("kickstart")
            if template and template not in ("~", INHERIT) and data.get("http_server") \
                    and data.get("name"):
                data["autoinst"] = autoinstall_url(data, what)
        return data
    return get_data


def _with_port(server, port):
    """``server`` with ``port`` appended unless it already names one (IPv6 literals bracketed)."""
    if server.startswith("["):
        return server if "]:" in server else "%s:%s" % (server, port)
    if server.count(":") == 1:
        return server
    if ":" in server:                      # bare IPv6 address
        return "[%s]:%s" % (server, port)
    return "%s:%s" % (server, port)


def wrap_get_install_tree_from_autoinst(orig):
    @functools.wraps(orig)
    def get_install_tree_from_autoinst(self, profile_data):
        server, port = self.server, self.port
        if not port or not server:
            return orig(self, profile_data)
        self.server = _with_port(server, port)
        try:
            return orig(self, profile_data)
        finally:
            self.server = server
    return get_install_tree_from_autoinst


def disk_size(size):
    """A Cobbler virt_file_size token as koan should use it: 10.0 -> 10, 0.5 -> 0.5; None when it
    is not a finite, non-negative number (koan's own handling then applies)."""
    try:
        value = float(str(size).strip())
    except (TypeError, ValueError):
        return None
    if math.isnan(value) or math.isinf(value) or value < 0:
        return None
    return int(value) if value == int(value) else value


def wrap_calc_virt_filesize2(orig):
    @functools.wraps(orig)
    def calc_virt_filesize2(self, data, default_filesize=1, size=0):
        fixed = disk_size(size)
        if fixed is not None:
            return fixed
        return orig(self, data, default_filesize=default_filesize, size=size)
    return calc_virt_filesize2


def wrap_sanitize_nics(orig):
    @functools.wraps(orig)
    def _sanitize_nics(nics, bridge, profile_bridge, network_count):
        if isinstance(nics, dict):
            fixed = {}
            for iname, intf in nics.items():
                if isinstance(intf, dict) and intf.get("virt_bridge") == INHERIT:
                    intf = dict(intf, virt_bridge="")
                fixed[iname] = intf
            nics = fixed
        return orig(nics, bridge, profile_bridge, network_count)
    return _sanitize_nics
