"""Logging for the agent: one line per event on stderr, prefixed with the level.

Under systemd (``JOURNAL_STREAM`` set) each line also starts with the ``<N>`` syslog
priority prefix that journald understands; otherwise lines look like
``warning: host disconnected``.  No timestamps (the journal adds them).
"""

import logging
import os
import sys

LOGGER_NAME = "hostkv-agent"

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class _Formatter(logging.Formatter):
    def __init__(self, journal):
        logging.Formatter.__init__(self)
        self.journal = journal

    def format(self, record):
        msg = record.getMessage()
        if record.exc_info:
            msg += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        # one event = one line, whatever the message contains
        msg = msg.replace("\r", "\\r").replace("\n", "\\n")
        level = record.levelname.lower()
        if self.journal:
            return "<%d>%s: %s" % (_PRIORITY.get(record.levelno, 6), level, msg)
        return "%s: %s" % (level, msg)


def get_logger():
    return logging.getLogger(LOGGER_NAME)


def setup(verbose=False, stream=None):
    """Configure the agent logger to write to ``stream`` (stderr); returns the logger."""
    logger = get_logger()
    for h in list(logger.handlers):
        logger.removeHandler(h)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(_Formatter(bool(os.environ.get("JOURNAL_STREAM"))))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    return logger
