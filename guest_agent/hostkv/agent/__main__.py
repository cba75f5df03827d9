"""``python3 -m hostkv.agent``: run the guest agent daemon (see ``--help``)."""

import os
import sys

from hostkv.agent import config, log
from hostkv.agent.daemon import Agent


def main(argv=None):
    cfg = config.parse_args(argv)
    logger = log.setup(cfg.verbose)
    os.umask(0o022)
    try:
        Agent(cfg).run()
    except (OSError, RuntimeError) as err:
        logger.error("fatal: %s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
