"""Root conftest: makes the checkout's code importable exactly as it is laid out.

`hostkv` is a namespace package split over protocol/, guest_agent/ and host_service/; the
test harness lives in tests/harness/.
"""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for sub in ("protocol", "guest_agent", "host_service", ""):
    path = os.path.join(REPO, sub)
    if path not in sys.path:
        sys.path.insert(0, path)

# Subprocesses started by tests (hostkvd, hostkvctl, the agent on the host) see the same code.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [os.path.join(REPO, s) for s in ("protocol", "guest_agent", "host_service")]
    + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
