"""Moved: the domain-XML functions live in :mod:`hostkv.common.domain_xml` (hostkvd, hostkvctl and
hostkv-koan all import them from there).  This alias keeps ``hostkv.hostkvd.domain_xml`` imports
of other code working; it is the very same module object."""
import sys

from hostkv.common import domain_xml as _shared

sys.modules[__name__] = _shared
