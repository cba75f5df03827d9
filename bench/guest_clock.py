"""Relating the test guest's CLOCK_MONOTONIC to a host clock, for the benchmarks.

``offset(run, host_clock=time.monotonic, samples=7) -> (offset, error_bound)``: ``run(argv)`` runs a
command in the guest and returns its stdout; the guest's clock is read from /proc/timer_list
(``now at N nsecs``) ``samples`` times and the exchange with the smallest round trip wins (NTP
style): guest_time = host_time + offset, within +- error_bound seconds (half that round trip).
"""

import time


def offset(run, host_clock=time.monotonic, samples=7):
    best = None
    for _ in range(samples):
        t0 = host_clock()
        out = run(["head", "-3", "/proc/timer_list"])
        t1 = host_clock()
        guest = int(out.split("now at ")[1].split()[0]) / 1e9
        if best is None or t1 - t0 < best[1]:
            best = (guest - (t0 + t1) / 2, t1 - t0)
    return best[0], best[1] / 2
