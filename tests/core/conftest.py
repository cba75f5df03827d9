"""Fixtures for the core end-to-end tests: a real QEMU guest running our agent, real hostkvd."""
import json
import os
import time

import pytest

from tests.harness.guest_image import build_guest_image
from tests.harness.hostkvd_proc import HostkvdProcess, uts_prefix


def wait_for(pred, timeout, what, interval=0.05):
    """Poll ``pred`` until it returns a truthy value; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1f s waiting for %s (last: %r)" % (timeout, what, last))
        time.sleep(interval)


def guest_value(guest, key):
    """The value the guest's agent has published for ``key`` (None when absent)."""
    rc, out, err = guest.exec(["cat", "/run/hostkv/keys/" + key], timeout=20)
    return out if rc == 0 else None


def guest_status(guest):
    rc, out, err = guest.exec(["hostkv", "status", "--json"], timeout=20)
    assert out, "hostkv status printed nothing (rc %s): %s\n%s" % (rc, err, guest.console_tail())
    return rc, json.loads(out)


def wait_guest_value(guest, key, expected, timeout=30):
    return wait_for(lambda: guest_value(guest, key) == expected, timeout,
                    "%s == %r in the guest" % (key, expected))


def start_host(workdir, name, channels, config_text="[host]\nhost.rack = r-%(name)s\n"):
    """A real hostkvd acting as the physical host ``name`` (its own UTS namespace = host name)."""
    d = HostkvdProcess(os.path.join(str(workdir), name), channels=channels, name="hostkvd",
                       config_text=config_text % {"name": name}, prefix=uts_prefix(name),
                       host_id="id-" + name)
    return d.start()


@pytest.fixture(scope="session")
def image():
    return build_guest_image()
