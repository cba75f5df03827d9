"""Cobbler trigger add/distro/pre: reject a distro whose hostkv_* autoinstall_meta is malformed.

The check and why it is a *pre* trigger: see _lib/validate.py and _lib/options.py.
"""

from ._lib import validate


def register():
    return "/var/lib/cobbler/triggers/add/distro/pre/*"


def run(api, args):
    """Raise CX naming every bad option; 0 (Cobbler's 'success') otherwise."""
    return validate.run_check(api, "distro", args)
