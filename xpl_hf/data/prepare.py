"""Former name of :mod:`xpl_hf.data.convert`: ``python -m xpl_hf.data.prepare ...`` still runs the converters."""

import sys

from .convert import *  # noqa: F401,F403
from .convert import __all__  # noqa: F401
from .convert.cli import main

if __name__ == "__main__":
    main(sys.argv[1:])
