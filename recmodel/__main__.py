"""``python -m recmodel``: the command line over past runs (:mod:`recmodel.serving.cli`)."""

import sys

from recmodel.serving.cli import main

if __name__ == "__main__":
    sys.exit(main())
