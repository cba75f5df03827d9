"""Fixtures for the core end-to-end tests: a real QEMU guest running our agent, real hostkvd."""
import os

import pytest

from tests.harness.guest_image import build_guest_image
from tests.harness.hostkvd_proc import HostkvdProcess, uts_prefix


def start_host(workdir, name, channels, config_text="[host]\nhost.rack = r-%(name)s\n"):
    """A real hostkvd acting as the physical host ``name`` (its own UTS namespace = host name)."""
    d = HostkvdProcess(os.path.join(str(workdir), name), channels=channels, name="hostkvd",
                       config_text=config_text % {"name": name}, prefix=uts_prefix(name),
                       host_id="id-" + name)
    return d.start()


@pytest.fixture(scope="session")
def image():
    return build_guest_image()
