"""``python -m jobhook``: the ``jobhook`` command."""

import sys

from jobhook.cli import main

if __name__ == "__main__":
    sys.exit(main())
