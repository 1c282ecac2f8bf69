import pytest

from tests.helpers import write_tiny_betons


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A tiny learnable dataset as real .beton files: (data_dir, name) with 400 train / 200 test images."""
    d = tmp_path_factory.mktemp("tiny_data")
    write_tiny_betons(d, "tiny")
    return d, "tiny"
