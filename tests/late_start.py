"""`python -m cifar_dist.train` whose LOCAL_RANK 0 starts CIFAR_DIST_TEST_LATE_S seconds after the others.

What a loaded machine does to a two-process launch now and then: the silent processes find a bad flag
first and exit before the reporting one has read it.
"""

import os
import sys
import time

from cifar_dist.cli.train import main

if __name__ == "__main__":
    if os.environ.get("LOCAL_RANK") == "0":
        time.sleep(float(os.environ.get("CIFAR_DIST_TEST_LATE_S", "0")))
    sys.exit(main())
