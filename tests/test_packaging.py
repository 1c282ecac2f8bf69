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
    assert (resources.root() / "launch" / "cpu.yaml").is_file()  # what the local sweep runner launches with


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


def test_cifar_dist_run_from_another_checkout_warns_in_one_line_and_uses_its_own_scripts(tmp_path):
    """An editable install's `cifar-dist` started inside a second clone runs the first clone's code and scripts:
    one warning line names both; `sweep plan` prints the running code's slurm/sweep.sh and CIFAR_DIST_ROOT."""
    import os
    import subprocess
    import sys

    other = tmp_path / "clone"
    (other / "cifar_dist").mkdir(parents=True)
    (other / "cifar_dist" / "__init__.py").write_text("")
    (other / "launch").mkdir()
    (other / "launch" / "cpu.yaml").write_text("")
    (other / "spec.yaml").write_text(f"name: w\npreset: smoke\nout_dir: {tmp_path / 'runs'}\n")
    root = resources.SOURCE_ROOT
    entry = f"import sys; sys.path.insert(0, {str(root)!r}); from cifar_dist.cli import main; sys.exit(main())"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CIFAR_DIST_"))}
    out = subprocess.run([sys.executable, "-c", entry, "sweep", "plan", "spec.yaml"], cwd=other, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [
        f"warning: cifar-dist runs the cifar_dist of {root} (with its slurm/ and launch/), not this checkout "
        f"{other}; to use this one run `python -m cifar_dist ...` here or `pip install -e {other}`"]
    assert f"--export=ALL,CIFAR_DIST_ROOT={root} " in out.stdout and f" {root}/slurm/sweep.sh " in out.stdout
    assert resources.checkout_warning(root / "tests") is None  # inside its own checkout: nothing to say
    assert resources.checkout_warning(tmp_path) is None  # outside any checkout
