"""Packaging: shipped files found by one rule, one version string, the wheel carries launch/ and slurm/."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest

import cifar_dist
from cifar_dist import resources

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_a_checkout_is_its_own_resource_root():
    assert resources.root() == REPO
    assert resources.find("launch/cpu.yaml") == REPO / "launch" / "cpu.yaml"
    with pytest.raises(FileNotFoundError, match="launch/none.yaml: not found in"):
        resources.find("launch/none.yaml")


def test_a_user_path_falls_back_to_the_shipped_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = "slurm/grids/seed001_grid.yaml"
    assert resources.locate(grid) == REPO / grid
    (tmp_path / "slurm" / "grids").mkdir(parents=True)
    (tmp_path / grid).write_text("name: mine\n")
    assert resources.locate(grid) == Path(grid)  # the user's own file wins
    assert resources.locate("no/such.yaml") == Path("no/such.yaml")


def test_every_launch_file_and_slurm_script_travels_in_the_wheel(pyproject):
    data_files = pyproject["tool"]["setuptools"]["data-files"]
    shipped = {f for patterns in data_files.values() for p in patterns for f in glob.glob(p, root_dir=REPO)}
    wanted = {str(p.relative_to(REPO)) for d in ("launch", "slurm") for p in (REPO / d).rglob("*") if p.is_file()}
    assert wanted and wanted == shipped
    for target, patterns in data_files.items():  # installed under the same relative paths
        assert all(target == f"share/cifar_dist/{Path(p).parent}" for p in patterns)


def test_one_version_string_and_a_licence(pyproject):
    project = pyproject["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "cifar_dist.__version__"}
    assert cifar_dist.__version__ and project["license"] and (REPO / "LICENSE").is_file()


def test_one_opencv_and_no_test_imports_outside_tests(pyproject):
    deps = " ".join(pyproject["project"]["dependencies"])
    assert "opencv" not in deps  # ffcv brings opencv-python; a second cv2 package would overwrite it
    for path in [*REPO.glob("bench/*.py"), *REPO.glob("cifar_dist/**/*.py"), *REPO.glob("data_prep/**/*.py")]:
        assert "from tests" not in path.read_text() and "import tests" not in path.read_text(), path
