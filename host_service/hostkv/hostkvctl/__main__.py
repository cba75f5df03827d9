"""``python -m hostkv.hostkvctl``."""
import sys

from hostkv.hostkvctl.cli import main

if __name__ == "__main__":
    sys.exit(main())
