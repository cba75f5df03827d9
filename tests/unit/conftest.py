"""Fixtures the unit tests share."""
import asyncio

import pytest


@pytest.fixture
def loop():
    """A fresh asyncio loop, set as the current one (hostkvd's code calls get_event_loop())."""
    lp = asyncio.new_event_loop()
    asyncio.set_event_loop(lp)
    yield lp
    lp.close()
