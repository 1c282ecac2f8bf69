import os

import pytest

from tests.helpers import write_tiny_betons
from tests.slurm_cluster import slurm_cluster, slurm_two_nodes  # noqa: F401  (session fixtures: here only)

# Under pytest-xdist (`make test` runs `pytest -n 2 --dist loadgroup`), the tests that share one expensive
# session fixture run in one worker, so no worker builds a copy of its own: one group per local SLURM cluster
# (one node; two nodes), one for the real-data conversion, one for the trained sweep of test_report and
# test_tensorboard. The first fixture a test needs (directly or through another fixture) names its group.
# (One group for both clusters left one worker idle for 218 s at the end of a run while the other went
# through every SLURM test.)
XDIST_GROUPS = {"slurm_cluster": "slurm1", "slurm_two_nodes": "slurm2", "real_cifar10": "real_cifar10",
                "real_sweep": "real_sweep"}


def pytest_configure(config):
    # An xdist worker leads a process group of its own: the tests that look for processes left in their
    # process group (test_bad_inputs) must not see the other worker's trainers.
    if os.environ.get("PYTEST_XDIST_WORKER") and os.getpgrp() != os.getpid():
        os.setpgid(0, 0)


# pytest-timeout: pyproject's `timeout` (300 s) holds for every test; a longer limit is given here, by what the
# test waits on, unless the test carries its own @pytest.mark.timeout. Whichever test first needs a session
# fixture builds it inside its own limit, hence the fixtures' rows. The limits catch hangs, not slowness: each
# is well above what its tests took on a loaded 2-core machine (the durations table at the end of a run).
FIXTURE_TIMEOUTS = {"real_cifar10": 1800, "slurm_cluster": 1800, "slurm_two_nodes": 1800, "real_sweep": 1200}
SLOW_TIMEOUT = 900  # s, tests marked slow (real data, several trainer processes)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks (else they are ignored)
def pytest_collection_modifyitems(config, items):
    timeouts = config.pluginmanager.hasplugin("timeout")
    for item in items:
        group = next((g for f, g in XDIST_GROUPS.items() if f in item.fixturenames), None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
        if timeouts and item.get_closest_marker("timeout") is None:
            limits = [t for f, t in FIXTURE_TIMEOUTS.items() if f in item.fixturenames]
            limits += [SLOW_TIMEOUT] if item.get_closest_marker("slow") else []
            if limits:
                item.add_marker(pytest.mark.timeout(max(limits)))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A tiny learnable dataset as real .beton files: (data_dir, name) with 400 train / 200 test images."""
    d = tmp_path_factory.mktemp("tiny_data")
    write_tiny_betons(d, "tiny")
    return d, "tiny"


@pytest.fixture(scope="session")
def real_cifar10(tmp_path_factory):
    """The shared real CIFAR-10 (JPEG image-folder tar) converted once per session by the real CLI.

    Returns (data_dir, "cifar10", seconds the conversion took). Skips when the archive is absent.
    """
    import subprocess
    import sys
    import time

    from tests.helpers import SHARED_JPEG

    if not SHARED_JPEG.is_file():
        pytest.skip(f"real CIFAR-10 archive not found at {SHARED_JPEG} (set CIFAR10_JPEG)")
    out = tmp_path_factory.mktemp("real_cifar10")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "data_prep", str(SHARED_JPEG), "--out", str(out), "--name", "cifar10",
                        "--verify", "--num_workers", "2"], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    return out, "cifar10", time.perf_counter() - t0
