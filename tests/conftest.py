import pytest

from tests.helpers import write_tiny_betons


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
