"""Where the launch files, SLURM scripts and sweep grids are: one rule for a checkout and an install.

The files (``launch/*.yaml``, ``slurm/*.sh``, ``slurm/grids/*.yaml``) live in one *resource root*:

1. a source checkout: the repository, i.e. the directory holding the ``cifar_dist`` package (an editable
   install or ``PYTHONPATH`` pointing at it counts as a checkout);
2. an installed wheel: ``<prefix>/share/cifar_dist``, where pip puts the same files (pyproject.toml's
   ``[tool.setuptools.data-files]``), found through the files the distribution recorded.

The first that holds ``launch/`` and ``slurm/`` wins. ``slurm/sweep.sh`` uses the same root
(``CIFAR_DIST_ROOT``, which ``sweep submit`` exports), so the scripts, launch files and code a command uses
always come from one tree: the one its own code was imported from. ``checkout_warning`` says so in one line
when the working directory is inside another checkout (an editable install's ``cifar-dist`` run from a
second clone runs the first clone, scripts included).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parent.parent
_MARKER = "launch/cpu.yaml"  # a file every resource root has


def _is_root(path: Path) -> bool:
    return (path / "launch").is_dir() and (path / "slurm").is_dir()


def root() -> Path:
    """The resource root (see the module doc); the checkout's path when neither rule finds one."""
    if _is_root(SOURCE_ROOT):
        return SOURCE_ROOT
    try:  # an installed wheel: the files the distribution recorded
        files = importlib.metadata.files("cifar_dist") or []
    except importlib.metadata.PackageNotFoundError:
        return SOURCE_ROOT
    for f in files:
        if f.as_posix().endswith(f"share/cifar_dist/{_MARKER}"):
            installed = Path(f.locate()).resolve().parent.parent
            return installed if _is_root(installed) else SOURCE_ROOT
    return SOURCE_ROOT


def locate(user_path: str | Path) -> Path:
    """A path a user typed: itself when it exists (relative to the working directory), else the shipped
    file of that relative path (``slurm/grids/seed001_grid.yaml`` works from any directory); else itself,
    unchanged, for the caller's own "file not found"."""
    path = Path(user_path)
    if path.exists() or path.is_absolute():
        return path
    shipped = root() / path
    return shipped if shipped.exists() else path


def enclosing_checkout(start: Path) -> Path | None:
    """The cifar_dist source checkout holding `start` (it or a parent with cifar_dist/__init__.py and
    launch/cpu.yaml), or None."""
    for d in (start, *start.parents):
        if (d / "cifar_dist" / "__init__.py").is_file() and (d / _MARKER).is_file():
            return d
    return None


def checkout_warning(cwd: Path | None = None) -> str | None:
    """The one warning line of the module doc when `cwd` lies in another checkout; None otherwise."""
    try:
        here = enclosing_checkout((cwd or Path.cwd()).resolve())
    except OSError:
        return None
    if here is None or here == SOURCE_ROOT:
        return None
    return (f"warning: cifar-dist runs the cifar_dist of {SOURCE_ROOT} (with its slurm/ and launch/), not this "
            f"checkout {here}; to use this one run `python -m cifar_dist ...` here or `pip install -e {here}`")
