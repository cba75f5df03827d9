"""hostkvd/timeout.py: the one timed wait, and the rule that hostkvd uses no other."""
import asyncio
import os
import re

import pytest

from hostkv.hostkvd import timeout
from hostkv.hostkvd.timeout import within

HOSTKVD = os.path.join(os.path.dirname(__file__), "..", "..", "host_service", "hostkv", "hostkvd")


def finish(loop, task, turns=50):
    """Run the loop until ``task`` is done, at most ``turns`` more cancellations; True if it ended."""
    for _ in range(turns):
        loop.run_until_complete(asyncio.wait((task,), timeout=0.2))
        if task.done():
            return True
        task.cancel()
    return False


def test_a_cancellation_in_the_turn_the_awaited_event_is_set_reaches_the_caller(loop):
    # the case asyncio.wait_for loses before Python 3.12: the loop below would run on for ever
    event = asyncio.Event()
    rounds = []

    async def looping():
        while True:
            await within(event.wait(), 30)
            event.clear()
            rounds.append(1)

    task = loop.create_task(looping())
    loop.run_until_complete(asyncio.sleep(0.01))
    event.set()
    task.cancel()
    loop.run_until_complete(asyncio.wait((task,), timeout=5))
    ended = task.done()
    assert finish(loop, task)
    assert ended and task.cancelled(), "the cancellation was lost; the waiter went round %d more time(s)" % len(rounds)
    assert rounds == []


def test_a_cancellation_while_waiting_reaches_the_caller_and_cancels_what_it_waited_for(loop):
    inner = loop.create_future()

    async def waiting():
        await within(inner, 30)

    task = loop.create_task(waiting())
    loop.run_until_complete(asyncio.sleep(0.01))
    task.cancel()
    loop.run_until_complete(asyncio.wait((task,), timeout=5))
    assert task.cancelled() and inner.cancelled()


def test_finished_in_time_is_true_and_its_exception_is_raised(loop):
    async def value():
        return 7

    async def broken():
        raise KeyError("x")

    assert loop.run_until_complete(within(value(), 5)) is True
    with pytest.raises(KeyError):
        loop.run_until_complete(within(broken(), 5))


def test_time_running_out_is_false_and_leaves_nothing_pending(loop):
    event = asyncio.Event()
    fut = loop.create_future()
    assert loop.run_until_complete(within(event.wait(), 0.05)) is False
    assert loop.run_until_complete(within(fut, 0)) is False
    assert fut.cancelled()
    others = [t for t in asyncio.all_tasks(loop) if not t.done()]
    assert others == []


def test_a_shielded_wait_runs_on_after_the_time_ran_out(loop):
    fut = loop.create_future()
    assert loop.run_until_complete(within(asyncio.shield(fut), 0.01)) is False
    assert not fut.done()
    fut.set_result(1)


def test_hostkvd_has_no_other_timed_wait():
    """asyncio.wait_for can lose a cancellation (timeout.py); hostkvd's code must not call it."""
    found = []
    for top, _dirs, files in os.walk(HOSTKVD):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(top, name)
                with open(path, encoding="utf-8") as f:
                    for n, line in enumerate(f, 1):
                        if re.search(r"\bwait_for\(", line) and "asyncio" in line:
                            found.append("%s:%d: %s" % (os.path.relpath(path, HOSTKVD), n, line.strip()))
    assert found == [], "use hostkv.hostkvd.timeout.within instead:\n" + "\n".join(found)
    assert os.path.samefile(os.path.dirname(timeout.__file__), HOSTKVD)
