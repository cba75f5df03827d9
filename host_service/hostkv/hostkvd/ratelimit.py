"""Token buckets: how hostkvd throttles a guest that sends too much.

A guest is untrusted.  Throttling works by *not reading*: while a channel is over its budget
hostkvd stops reading that socket, so QEMU stops taking data from the guest's port and the
guest's own writes block.  Nothing is buffered on the host for it.
"""

import time


class TokenBucket(object):
    """``rate`` tokens per second, at most ``burst`` saved up."""

    def __init__(self, rate, burst, clock=time.monotonic):
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def take(self, n):
        """Spend ``n`` tokens; return how many seconds to wait before going on (0 if none)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate
