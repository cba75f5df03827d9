"""Polling until something holds: the one ``wait_for`` of the test harness.

    value = wait_for(lambda: read() == "x", 10, "x to appear")

Contract: ``predicate`` is called every ``interval`` seconds until it returns a true value, which
``wait_for`` returns.  Exceptions whose type is in ``retry`` mean "not yet" (the last one is named
if time runs out); any other exception propagates at once.  After ``timeout`` seconds ``error``
(default AssertionError: a test failure) is raised naming ``what``, the timeout and the last value
or exception.  Times are monotonic.
"""
import time


def wait_for(predicate, timeout=5.0, what="condition", interval=0.05, error=AssertionError, retry=()):
    deadline = time.monotonic() + timeout
    last, last_exc = None, None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except retry as exc:    # noqa: B030 - a tuple of exception types
            last_exc = exc
        if time.monotonic() > deadline:
            raise error("timed out after %.1f s waiting for %s (last: %s)"
                        % (timeout, what, "error %r" % last_exc if last_exc is not None else repr(last)))
        time.sleep(interval)
