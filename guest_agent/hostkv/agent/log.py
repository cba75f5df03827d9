"""Logging for the agent: one line per event on stderr, prefixed with the level.

Under systemd (``JOURNAL_STREAM`` set) each line also starts with the ``<N>`` syslog
priority prefix that journald understands; otherwise lines look like
``warning: host disconnected``.  No timestamps (the journal adds them).

A small logger of its own rather than the ``logging`` module: the agent runs on every guest for
the guest's whole life, and ``logging`` (with traceback, linecache, tokenize, weakref, string...)
is 1.4 MB of its resident memory.  The interface is the part of ``logging.Logger`` the agent uses:
``debug/info/warning/error/exception(msg, *args)``, ``setLevel``, ``isEnabledFor``.  Until
:func:`setup` is called only warnings and errors are written (like logging's last resort).
"""

import os
import sys
import threading

DEBUG, INFO, WARNING, ERROR, CRITICAL = 10, 20, 30, 40, 50
_NAMES = {DEBUG: "debug", INFO: "info", WARNING: "warning", ERROR: "error", CRITICAL: "critical"}
_PRIORITY = {DEBUG: 7, INFO: 6, WARNING: 4, ERROR: 3, CRITICAL: 2}


class Logger(object):
    def __init__(self):
        self.level = WARNING
        self.stream = None           # None: sys.stderr at the time of writing
        self.journal = False
        self._lock = threading.Lock()

    def setLevel(self, level):
        self.level = level

    def isEnabledFor(self, level):
        return level >= self.level

    def log(self, level, msg, *args, **kw):
        if level < self.level:
            return
        if args:
            msg = msg % args
        if kw.get("exc_info"):
            import traceback         # only when there is a traceback to show
            msg += " | " + traceback.format_exc().rstrip("\n").replace("\n", " | ")
        # one event = one line, whatever the message contains
        msg = msg.replace("\r", "\\r").replace("\n", "\\n")
        if self.journal:
            line = "<%d>%s: %s\n" % (_PRIORITY.get(level, 6), _NAMES.get(level, "info"), msg)
        else:
            line = "%s: %s\n" % (_NAMES.get(level, "info"), msg)
        stream = self.stream if self.stream is not None else sys.stderr
        with self._lock:
            try:
                stream.write(line)
                stream.flush()
            except (OSError, ValueError):
                pass                 # a closed or full stderr must not stop the agent

    def debug(self, msg, *args):
        self.log(DEBUG, msg, *args)

    def info(self, msg, *args):
        self.log(INFO, msg, *args)

    def warning(self, msg, *args):
        self.log(WARNING, msg, *args)

    def error(self, msg, *args):
        self.log(ERROR, msg, *args)

    def exception(self, msg, *args):
        self.log(ERROR, msg, *args, exc_info=True)


_LOGGER = Logger()


def get_logger():
    return _LOGGER


def setup(verbose=False, stream=None):
    """Configure the agent logger to write to ``stream`` (stderr); returns the logger."""
    _LOGGER.stream = stream
    _LOGGER.journal = bool(os.environ.get("JOURNAL_STREAM"))
    _LOGGER.setLevel(DEBUG if verbose else INFO)
    return _LOGGER


def reset():
    """Back to the state before setup() (tests)."""
    _LOGGER.stream = None
    _LOGGER.journal = False
    _LOGGER.setLevel(WARNING)
