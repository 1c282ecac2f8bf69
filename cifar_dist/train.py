"""Entry of `python -m cifar_dist.train` and `accelerate launch -m cifar_dist.train` (see cifar_dist.cli.train)."""

import os
import sys

from cifar_dist.cli.train import main

if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
