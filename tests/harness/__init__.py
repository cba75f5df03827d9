"""Test harness: real guests, real daemons, started and torn down by the tests themselves.

One module per job (each states its contract at its top).  The checkout's source roots are
declared here once: the ``hostkv`` namespace package is split over :data:`SOURCE_DIRS`.
pytest puts them on ``sys.path`` (``pythonpath`` in pytest.ini names the same directories;
tests/vm/test_harness_unit.py checks that they agree), subprocesses get :data:`PYTHONPATH`.
Importing this package calls :func:`use_checkout`, so scripts run outside pytest (bench/,
scripts/: they put the repo root on sys.path and import tests.harness...) see the same code.
"""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCE_DIRS = ("protocol", "guest_agent", "host_service")
SOURCE_ROOTS = tuple(os.path.join(REPO, d) for d in SOURCE_DIRS)
PYTHONPATH = os.pathsep.join(SOURCE_ROOTS)


def use_checkout(environ=os.environ):
    """Make the checkout importable in this process (``sys.path``) and its children
    (``$PYTHONPATH``, the source roots first), as pytest does for the tests."""
    for path in (REPO,) + SOURCE_ROOTS:
        if path not in sys.path:
            sys.path.insert(1, path)
    rest = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in SOURCE_ROOTS]
    environ["PYTHONPATH"] = os.pathsep.join(list(SOURCE_ROOTS) + rest)


use_checkout()
