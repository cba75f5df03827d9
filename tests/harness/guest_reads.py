"""Reading what the agent published in a test guest, and waiting for it.

    wait_for(lambda: guest_value(g, "host.hostname") == "host-a", 30, "host-a in the guest")
                                       # (tests.harness.waiting.wait_for)
    rc, doc = guest_status(g)          # `hostkv status --json` in the guest

Works with any guest object that has ``exec(argv, timeout)`` and ``console_tail()``
(QemuGuest; libvirt guests).
"""
import json
import os

from hostkv.common import paths
from tests.harness.waiting import wait_for


def guest_value(guest, key):
    """The value the guest's agent published for ``key`` (exact bytes as text), None if absent."""
    rc, out, err = guest.exec(["cat", os.path.join(paths.AGENT_RUN_DIR, "keys", key)], timeout=20)
    return out if rc == 0 else None


def guest_status(guest):
    """(exit code, parsed JSON) of `hostkv status --json` in the guest."""
    rc, out, err = guest.exec(["hostkv", "status", "--json"], timeout=20)
    assert out, "hostkv status printed nothing (rc %s): %s\n%s" % (rc, err, guest.console_tail())
    return rc, json.loads(out)


def wait_guest_value(guest, key, expected, timeout=30):
    return wait_for(lambda: guest_value(guest, key) == expected, timeout,
                    "%s == %r in the guest" % (key, expected))
