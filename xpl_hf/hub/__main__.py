"""``python -m xpl_hf.hub``: see :mod:`xpl_hf.hub.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
