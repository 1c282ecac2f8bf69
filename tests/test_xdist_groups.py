"""`make test` runs two pytest-xdist workers with `--dist loadgroup` and relies on it: every test of one local
SLURM cluster (conftest.XDIST_GROUPS) runs in one worker, so each cluster starts once. The groups were dropped
without a word (each worker started its own clusters; a two-node preemption test took 380 s instead of 33 s),
for two causes, both checked here: the suite's hook added the marks after xdist's hook had read them (it now
runs first), and pytest 9.2's node ids, which xdist 3.8 cannot suffix (pyproject keeps pytest below 9.2). The
test runs a small suite through tests/conftest.py's own grouping hook and checks where each test ran."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

CONFTEST = '''
import pytest

from tests.conftest import pytest_collection_modifyitems  # noqa: F401  (the suite's own grouping)


@pytest.fixture
def slurm_cluster():
    return "one node"


@pytest.fixture
def slurm_two_nodes():
    return "two nodes"
'''

TESTS = '''
import json, os, time
from pathlib import Path

import pytest

OUT = Path(__file__).with_name("where.jsonl")


def note(group, i):
    time.sleep(0.2)  # long enough that both workers take tests
    with OUT.open("a") as f:
        f.write(json.dumps([group, i, os.environ["PYTEST_XDIST_WORKER"]]) + "\\n")


@pytest.mark.parametrize("i", range(4))
def test_a(slurm_cluster, i):
    note("a", i)


@pytest.mark.parametrize("i", range(4))
def test_b(slurm_two_nodes, i):
    note("b", i)


@pytest.mark.parametrize("i", range(4))
def test_free(i):
    note("free", i)
'''


def test_loadgroup_keeps_each_group_in_one_worker(tmp_path: Path):
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_grouped.py").write_text(TESTS)
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist",
                        "loadgroup", "-o", "addopts=", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stdout + p.stderr
    rows = [json.loads(line) for line in (tmp_path / "where.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    workers = {g: {w for group, _, w in rows if group == g} for g in ("a", "b", "free")}
    assert len(workers["a"]) == 1 and len(workers["b"]) == 1, workers  # one worker per group
    assert workers["free"] | workers["a"] | workers["b"] == {"gw0", "gw1"}, workers  # and both workers worked
