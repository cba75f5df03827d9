"""The hostkv_* ``autoinstall_meta`` options, as the validation triggers check them.

The rule is hostkv's shared one, :mod:`hostkv.common.options` (koan's extension and the
``hostkv_agent`` snippet read the options by the same rule; see that module for the options,
the boolean words and why some values are refused).  :func:`check_meta` returns the list of
human-readable problems of an autoinstall_meta dict, empty if none; an unknown ``hostkv_*`` key
is a problem too (a typo such as ``hostkv_enable=1`` must not be silently ignored).

Which copy of the rule: the private one ``hostkv-cobbler install`` ships beside this file
(``_lib/common/``, the same hostkv version as the plugin); from a checkout (the tests), the
checkout's ``hostkv.common``.  The log line names the one in use.
"""

import logging
import os

try:
    from .common import options as rules        # the private copy installed with the plugin
except ImportError:  # pragma: no cover - a checkout, where hostkv.common is on the path
    from hostkv.common import options as rules

logging.getLogger().info("hostkv: shared rules from %s", os.path.dirname(rules.__file__))

check_meta = rules.check_meta
vm_values = rules.vm_values
