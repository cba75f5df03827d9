"""Root conftest: subprocesses started by tests (hostkvd, hostkvctl, the agent on the host) see the
checkout's code exactly as the tests do.

`hostkv` is a namespace package split over protocol/, guest_agent/ and host_service/; pytest.ini's
``pythonpath`` puts those (and the repo root, for tests.harness, and koan_patch/, for hostkv_koan)
on sys.path; :data:`tests.harness.PYTHONPATH` is the same roots for child processes.
"""
from tests.harness import use_checkout

use_checkout()
