"""Timeouts: waiting for something for at most so many seconds, without losing a cancellation.

hostkvd stops a task by cancelling it: a guest's channel when the guest leaves or its socket
moves, a key source on reload, the libvirt source at shutdown.  Most of those tasks loop around a
timed wait.  ``asyncio.wait_for`` cannot be that wait on the Pythons hostkvd runs on (3.6 on EL8
up to 3.11 on Debian 12): when the task is cancelled in the same turn of the loop as the thing it
waits for completes, ``wait_for`` returns the result and the cancellation is gone (CPython
gh-86296, fixed by the rewrite of ``wait_for`` in 3.12).  The loop then goes round again, and
whoever awaits the cancelled task waits for ever.  Measured here on 3.11.7: an Event set and the
task cancelled back to back - the task ran on, every time.  CI hit it as a key-source test that
hung for 15 minutes.

``within`` is the one timed wait hostkvd uses.  Its contract:

- it returns True if ``aw`` finished within ``seconds`` (an exception of ``aw`` is raised), and
  False if the time ran out, after cancelling ``aw`` and letting that cancellation finish;
- a cancellation of the caller always reaches the caller, whatever ``aw`` did meanwhile; ``aw``
  is cancelled too (wrap it in ``asyncio.shield`` to keep it running).

It relies on ``asyncio.wait``, which waits on a future of its own and never swallows anything.
"""

import asyncio


async def within(aw, seconds):
    """Await ``aw`` for at most ``seconds`` (module docstring): True if it finished in time."""
    fut = asyncio.ensure_future(aw)
    try:
        done, _pending = await asyncio.wait((fut,), timeout=max(0.0, seconds))
    except BaseException:
        fut.cancel()
        raise
    if done:
        fut.result()
        return True
    fut.cancel()
    await asyncio.wait((fut,))      # a cancellation of the caller here still propagates
    return False
