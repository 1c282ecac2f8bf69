"""`python -m cifar_dist.sweep ...` = `cifar-dist sweep ...` (a thin entry of the command-line face)."""

import sys

from cifar_dist.cli.sweep import main

sys.exit(main())
