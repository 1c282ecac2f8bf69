"""The benchmarks under bench/ follow the package: every name they import from it exists, and the first-GPU
check's loader rows run on the CPU (the rows the other gpu_check tests skip)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO


def _package_imports() -> list[tuple[str, int, str, str]]:
    """(file, line, module, name) of every `from cifar_dist...|data_prep... import name` in bench/*.py,
    those inside functions included."""
    found = []
    for path in sorted((REPO / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("cifar_dist", "data_prep"):
                found += [(path.name, node.lineno, node.module, alias.name) for alias in node.names]
    return found


def test_every_name_bench_imports_from_the_package_exists():
    imports = _package_imports()
    assert len(imports) > 20  # the scripts were read
    missing = []
    for file, line, module, name in imports:
        mod = importlib.import_module(module)
        is_submodule = hasattr(mod, "__path__") and importlib.util.find_spec(f"{module}.{name}") is not None
        if not hasattr(mod, name) and not is_submodule:
            missing.append(f"bench/{file}:{line}: {module}.{name}")
    assert not missing, missing


@pytest.mark.slow
def test_gpu_check_loader_rows_run_on_the_cpu(tiny_data, tmp_path):
    data_dir, name = tiny_data
    p = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--device=cpu", f"--data_dir={data_dir}",
                        f"--name={name}", f"--out={tmp_path}", "--skip=fast,sigterm,presets"],
                       capture_output=True, text=True, timeout=240, env={**os.environ, "CIFAR_DIST_PYTHON": sys.executable})
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-2000:])
    rows = {line[:40].strip(): line for line in p.stdout.splitlines() if line.startswith("loader ")}
    assert set(rows) == {"loader ffcv train", "loader ffcv eval", "loader tensor train"}, p.stdout
    assert " ok " in rows["loader ffcv train"] and "400 images on cpu" in rows["loader ffcv train"], p.stdout
    assert " ok " in rows["loader tensor train"] and "400 images on cpu" in rows["loader tensor train"], p.stdout
    assert " ok " in rows["loader ffcv eval"] and "200 images on cpu" in rows["loader ffcv eval"], p.stdout
    assert p.stdout.rstrip().splitlines()[-1].startswith("gpu_check: every row passed"), p.stdout
