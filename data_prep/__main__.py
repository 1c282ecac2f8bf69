"""``python -m data_prep``: see `data_prep.cli` (``python -m data_prep --help``)."""

import sys

from .cli import main

if __name__ == "__main__":  # guarded: multiprocessing may import this module in child processes
    sys.exit(main())
