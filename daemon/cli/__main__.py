"""`python -m daemon.cli`: the same as the `langdock-budget` script."""

import sys

from daemon.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
