"""``python -m xpl_hf.data.convert``: see :mod:`xpl_hf.data.convert.cli`."""

import sys

from .cli import main

main(sys.argv[1:])
