"""bench/gpu_check.sh's logic without a GPU: `--device=cpu --trainer=tests/fake_trainer.py` runs the check's own
rows, with a stand-in trainer that dies at once or hangs. The check must end in seconds, print each row as it
ends (with the last 20 lines of a failed trainer's log) and exit non-zero."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from cifar_dist.presets import PRESETS
from tests.helpers import REPO

FAST_ROWS = ["fast 10 epochs bf16", "fast 10 epochs bf16 + compile", "fast 10 epochs bf16, ffcv loader"]


def check_cmd(tiny_data, tmp_path, *extra: str) -> list[str]:
    data_dir, name = tiny_data
    return ["bash", str(REPO / "bench" / "gpu_check.sh"), "--device=cpu", f"--trainer={REPO / 'tests' / 'fake_trainer.py'}",
            f"--data_dir={data_dir}", f"--name={name}", f"--out={tmp_path}", "--skip=loaders", *extra]


def rows(stdout: str) -> dict[str, str]:
    """check name -> its row line."""
    found = (re.match(r"^(\S.*?)\s+(ok|FAILED)\s", line) for line in stdout.splitlines())
    return {m.group(1): m.string for m in found if m and not m.string.startswith("gpu_check:")}


@pytest.mark.slow
def test_a_trainer_that_dies_at_once_ends_each_row_at_once_with_its_log_tail(tiny_data, tmp_path):
    env = {**os.environ, "FAKE_EXIT": "3", "CIFAR_DIST_PYTHON": sys.executable}
    t0 = time.monotonic()
    p = subprocess.run(check_cmd(tiny_data, tmp_path), capture_output=True, text=True, timeout=120, env=env)
    seconds = time.monotonic() - t0
    assert p.returncode == 1, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    assert seconds < 45, f"the check took {seconds:.0f} s with trainers that die at once"
    got = rows(p.stdout)
    presets = [f"{q} 1 epoch, 5000 images" for q in sorted(PRESETS) if q != "fast"]
    sigterm = "SIGTERM mid-epoch (1gpu launcher)"
    assert set(got) == {*FAST_ROWS, sigterm, *presets}, p.stdout  # no resume without a checkpoint
    for name in [*FAST_ROWS, *presets]:
        assert "FAILED" in got[name] and "trainer exited 3" in got[name], got[name]
    lines = p.stdout.splitlines()
    first = lines.index(got[FAST_ROWS[0]])
    shown = lines[first + 1 : first + 21]
    assert shown == [f"    | fake line {i}" for i in range(6, 26)], shown  # the last 20 lines of its log
    assert p.stdout.count("    | fake line 25") == len(got)  # every failed row shows its tail
    assert p.stdout.rstrip().splitlines()[-1].startswith(f"gpu_check: {len(got)} of {len(got)} rows FAILED")


@pytest.mark.slow
def test_a_hung_trainer_is_stopped_at_its_rows_time_and_the_budget_ends_the_check(tiny_data, tmp_path):
    """Trainers that never finish: each row stops at --row_timeout_s, rows print as they end (the first arrives
    while the check still runs), and rows past the budget are reported as not run."""
    env = {**os.environ, "FAKE_STEP_S": "600", "CIFAR_DIST_PYTHON": sys.executable}
    t0 = time.monotonic()
    proc = subprocess.Popen(check_cmd(tiny_data, tmp_path, "--row_timeout_s=1.5", "--budget_s=4"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out, first_row_while_running = [], None
    for line in proc.stdout:
        out.append(line)
        if first_row_while_running is None and line.startswith(FAST_ROWS[0] + " "):
            first_row_while_running = proc.poll() is None
    proc.wait(timeout=60)
    seconds = time.monotonic() - t0
    stdout = "".join(out)
    assert proc.returncode == 1 and seconds < 30, (proc.returncode, seconds, stdout[-2000:])
    assert first_row_while_running, stdout
    got = rows(stdout)
    assert "stopped after 1.5 s (the row's time)" in got[FAST_ROWS[0]], got
    assert any("not run: the check's time budget is spent" in line for line in got.values()), stdout
    # no trainer is left behind
    ps = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert ps == [], ps
