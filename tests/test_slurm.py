"""Sweeps on a real SLURM cluster that the suite starts and stops (tests/slurm_cluster.py).

The cluster's node offers 4 CPUs and 4 fake GPUs (gres File= symlinks to /dev/null), so in the array
test only the %2 limit keeps tasks from all running at once. slurm/sweep.sh is used as
shipped: the array test keeps its `--gpus-per-node=1` default, so every task is given a GPU that torch
cannot use and must fall back to the CPU; the preemption test asks for no GPU. Runs use the tiny dataset
(300 train / 100 validation / 200 test images) and the smoke preset, on one CPU process (the default)
or two (CIFAR_DIST_CPU_PROCS=2: accelerate launch, gloo DDP) in the preemption and train.sh tests.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from cifar_dist.cli.sweep import main as sweep_main
from tests.helpers import REPO
from tests.slurm_cluster import Cluster

pytestmark = pytest.mark.slurm
TIMEOUT = 420  # seconds a job may take before the test gives up (the machine may be shared)


def _use_cluster(mp: pytest.MonkeyPatch, cluster: Cluster, python: bool = True) -> None:
    """Point SLURM clients at the test cluster; jobs inherit this environment (sbatch --export=ALL).
    python=False: no CIFAR_DIST_PYTHON and no directory of this interpreter on PATH, as in a login shell
    without the project's environment (`sweep submit` must pass its interpreter on by itself)."""
    for key in list(os.environ):
        if key.startswith(("SLURM_", "SBATCH_", "CIFAR_DIST_")):
            mp.delenv(key)
    mp.setenv("SLURM_CONF", str(cluster.conf))
    if python:
        mp.setenv("CIFAR_DIST_PYTHON", sys.executable)
    else:
        here = str(Path(sys.executable).parent)
        mp.setenv("PATH", os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep) if d != here))
    mp.chdir(REPO)


def _sweep(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = sweep_main(list(argv))
    return rc, out.getvalue()


def _job_id(submit_output: str) -> str:
    m = re.search(r"submitted job array (\d+)", submit_output)
    assert m, submit_output
    return m.group(1)


def _jobcomp(cluster: Cluster, job: str) -> list[dict[str, str]]:
    return [row for row in cluster.jobcomp() if row.get("ArrayJobId", row.get("JobId")) == job]


def _wait_job(cluster: Cluster, job: str, logs: Path, timeout: float = TIMEOUT) -> None:
    """Until no task of `job` is queued or running; on timeout cancel it and fail with the logs."""
    deadline = time.monotonic() + timeout
    while any(line.split("|")[0].split("_")[0] == job for line in cluster.jobs()):
        if time.monotonic() > deadline:
            cluster.run("scancel", job, check=False)
            text = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted(logs.glob("*.out")))
            pytest.fail(f"job {job} still in squeue after {timeout} s: {cluster.jobs()}\n{text}")
        time.sleep(0.5)


def _wait_for(predicate, what: str, timeout: float = TIMEOUT, poll: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _spec(path: Path, name: str, data: tuple[Path, str], body: str) -> Path:
    data_dir, data_name = data
    path.write_text(f"""\
name: {name}
preset: smoke
out_dir: {path.parent / 'runs'}
fixed:
  data.dir: {data_dir}
  data.name: {data_name}
  data.val_size: 100
  run.progress: false
{body}""")
    return path


def _max_concurrency(rows: list[dict[str, str]]) -> int:
    """Most tasks running at once, from jobcomp start/end times (1 s resolution; an end counts before a
    start in the same second, so back-to-back tasks are not counted as overlapping)."""
    events = []
    for row in rows:
        events.append((datetime.fromisoformat(row["StartTime"]), 1))
        events.append((datetime.fromisoformat(row["EndTime"]), -1))
    running = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        running += delta
        peak = max(peak, running)
    return peak


@pytest.fixture(scope="module")
def finished_sweep(slurm_cluster, tiny_data, tmp_path_factory):
    """A 4-cell sweep submitted with `cifar-dist sweep submit` (array 0-3%2) and run to the end."""
    tmp = tmp_path_factory.mktemp("array")
    spec = _spec(tmp / "arr.yaml", "arr", tiny_data, """\
  run.epochs: 1
grid:
  optim.lr: [1.0e-3, 2.0e-3]
  optim.name: [adam, sgd]
parallel: 2
sbatch: [--cpus-per-task=1, --time=10]
""")
    with pytest.MonkeyPatch.context() as mp:
        _use_cluster(mp, slurm_cluster, python=False)
        start = time.monotonic()
        rc, out = _sweep("submit", str(spec))
        assert rc == 0, out
        job = _job_id(out)
        _wait_job(slurm_cluster, job, tmp / "runs" / "arr" / "slurm")
        seconds = time.monotonic() - start
    runs = [tmp / "runs" / "arr" / f"c00{i}-s0" for i in range(4)]
    return SimpleNamespace(spec=spec, job=job, out=out, dir=tmp / "runs" / "arr", runs=runs, seconds=seconds)


def test_array_of_four_cells_with_two_at_a_time_completes_on_fake_gpus(finished_sweep, slurm_cluster):
    s = finished_sweep
    # the partition has (fake) GPUs: submit asks for one per task; the spec's CPU count stays
    assert f"sbatch --job-name=arr --array=0-3%2 --output={s.dir}/slurm/%A_%a.out --gpus-per-node=1 " \
           f"--cpus-per-task=1 --time=10 slurm/sweep.sh {s.spec}" in s.out
    rows = _jobcomp(slurm_cluster, s.job)
    assert sorted(int(r["ArrayTaskId"]) for r in rows) == [0, 1, 2, 3]
    assert {(r["JobState"], r["ExitCode"]) for r in rows} == {("COMPLETED", "0:0")}
    assert _max_concurrency(rows) == 2  # the node fits 4 such tasks: %2 is what holds the others back
    for i, run in enumerate(s.runs):
        result = json.loads((run / "result.json").read_text())
        assert (result["name"], result["epochs"], result["status"], result["world_size"]) == (
            f"c00{i}-s0", 1, "finished", 1)
        assert [row["epoch"] for row in _metrics(run)] == [1]
        task = json.loads((run / "sweep_task.json").read_text())
        assert (task["state"], task["exit"], task["job"]) == ("done", 0, f"{s.job}_{i}")
        log = (s.dir / "slurm" / f"{s.job}_{i}.out").read_text()
        # submit's --gpus-per-node=1 got a fake GPU; torch cannot use it: CPU, one process
        assert re.search(rf"c00{i}-s0: usable GPUs 0 \(allocated 1, CUDA_VISIBLE_DEVICES=[0-3]\)", log), log
        assert "processes 1 (DistributedType.NO, cpu" in log
    config = (s.runs[3] / "config.yaml").read_text()
    assert "lr: 0.002" in config and "name: sgd" in config  # c003 = lr 2e-3 x sgd
    record = json.loads((s.dir / "sweep.json").read_text())
    assert [c["cell"] for c in record["cells"]] == ["c000", "c001", "c002", "c003"]
    with pytest.MonkeyPatch.context() as mp:
        _use_cluster(mp, slurm_cluster)
        rc, out = _sweep("status", str(s.spec), "--json")
    status = json.loads(out)
    assert status["squeue"] is True
    assert [(r["run"], r["state"], r["epoch"]) for r in status["runs"]] == [
        (f"c00{i}-s0", "done", "1/1") for i in range(4)]


def test_resubmitting_a_finished_sweep_trains_nothing(finished_sweep, slurm_cluster):
    s = finished_sweep
    before = [((r / "result.json").stat().st_mtime_ns, (r / "metrics.jsonl").read_text()) for r in s.runs]
    comp = len(slurm_cluster.jobcomp())
    with pytest.MonkeyPatch.context() as mp:
        _use_cluster(mp, slurm_cluster)
        rc, out = _sweep("submit", str(s.spec))
        assert rc == 0
        assert "4 runs; skipping 4 finished; submitting 0" in out and "nothing to submit" in out
        assert slurm_cluster.jobs() == [] and len(slurm_cluster.jobcomp()) == comp
        # The same array submitted by hand: every task sees result.json and exits without training.
        logs = s.dir / "again"
        logs.mkdir()
        sub = subprocess.run(["sbatch", "--parsable", "--array=0-3%2", "--cpus-per-task=1", "--gpus-per-node=0",
                              f"--output={logs}/%A_%a.out", "slurm/sweep.sh", str(s.spec)],
                             capture_output=True, text=True, check=True)
        job = sub.stdout.strip()
        _wait_job(slurm_cluster, job, logs)
    assert {(r["JobState"], r["ExitCode"]) for r in _jobcomp(slurm_cluster, job)} == {("COMPLETED", "0:0")}
    for i, run in enumerate(s.runs):
        log = (logs / f"{job}_{i}.out").read_text()
        assert f"sweep.sh: skip c00{i}-s0: finished ({run}/result.json)" in log
        assert "cifar_dist.train" not in log and "cifar_dist:" not in log
    assert [((r / "result.json").stat().st_mtime_ns, (r / "metrics.jsonl").read_text()) for r in s.runs] == before


def test_preempted_task_requeues_and_resumes_without_losing_or_repeating_epochs(
        slurm_cluster, tiny_data, tmp_path):
    """USR1 to the batch script (as SLURM sends before the time limit): the two DDP processes (accelerate
    launch, CIFAR_DIST_CPU_PROCS=2) checkpoint mid-epoch, the task requeues itself, the second attempt
    resumes and finishes; epochs 1..3 exactly once, and the step count runs on without a gap."""
    spec = _spec(tmp_path / "pre.yaml", "pre", tiny_data, """\
  run.epochs: 3
  run.global_batch_size: 10
seeds: [5]
sbatch: [--cpus-per-task=2, --gpus-per-node=0, --time=10]
""")
    run = tmp_path / "runs" / "pre" / "c000-s5"
    logs = tmp_path / "runs" / "pre" / "slurm"
    with pytest.MonkeyPatch.context() as mp:
        _use_cluster(mp, slurm_cluster)
        mp.setenv("CIFAR_DIST_CPU_PROCS", "2")
        rc, out = _sweep("submit", str(spec))
        assert rc == 0, out
        job = _job_id(out)
        task = f"{job}_0"
        try:
            _wait_for(lambda: (run / "sweep_task.json").is_file(), "the task to start")
            rc, out = _sweep("status", str(spec), "--json")  # while the trainer starts up
            assert [(r["state"], r["detail"]) for r in json.loads(out)["runs"]] == [("running", f"job {task}")]
            # Signal as soon as epoch 1 is logged: two epochs (60 steps) and their evaluations remain.
            _wait_for(lambda: (run / "metrics.jsonl").is_file(), "the first epoch", poll=0.05)
            slurm_cluster.run("scancel", "--signal=USR1", "--batch", task)
            _wait_for(lambda: (run / "result.json").is_file(), "the resumed run to finish")
            _wait_job(slurm_cluster, job, logs)
        finally:
            slurm_cluster.run("scancel", job, check=False)
        rc, out = _sweep("status", str(spec), "--json")
    assert [r["state"] for r in json.loads(out)["runs"]] == ["done"]
    # 300 training images / batch 10 = 30 steps per epoch: one row per epoch, steps continue exactly
    rows = _metrics(run)
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 30), (2, 60), (3, 90)]
    log = (logs / f"{task}.out").read_text()
    assert "sweep.sh: got SIGUSR1; asking the trainer(s) to save a checkpoint and stop" in log
    assert "--config_file " + str(REPO / "launch" / "cpu.yaml") + " --num_processes 2" in log
    assert log.count("processes 2 (DistributedType.MULTI_CPU") == 2  # both attempts ran real DDP
    stop = re.search(r"stopped by signal at epoch ([23]) step (\d+); checkpoint saved", log)
    assert stop, log
    # the trainers' own status 3 (from status.json), not the launcher's 1
    assert f"c000-s5 stopped (exit 3); requeueing {task} to resume from the checkpoint" in log
    assert f"index 0, job {task} on {slurm_cluster.node}, attempt 2" in log
    assert log.count("resumed at epoch") == 1
    # a normal preemption of a torchrun task: no launcher failure report, no warning, no "config changed"
    noise = ("FAILED", "exitcode", "Exited with exit code", "death signal", "Traceback", "Warning", "config changed",
             "terminate called")
    assert not [ln for ln in log.splitlines() if any(n in ln for n in noise)], log
    assert f"resumed at epoch {stop.group(1)} step {stop.group(2)}" in log
    result = json.loads((run / "result.json").read_text())
    assert (result["epochs"], result["status"], result["world_size"]) == (3, "finished", 2)
    assert json.loads((run / "sweep_task.json").read_text())["state"] == "done"
    # jobcomp logs each attempt: the requeued one (state PENDING again at that moment), then the last one
    attempts = [(r["JobState"], r["ArrayTaskId"]) for r in _jobcomp(slurm_cluster, job)]
    assert attempts == [("PENDING", "0"), ("COMPLETED", "0")]


def test_train_sh_runs_one_configuration_with_two_processes(slurm_cluster, tiny_data, tmp_path):
    """slurm/train.sh on one node: srun -> accelerate launch (multi_node.yaml) -> 2 CPU processes (gloo)."""
    data_dir, name = tiny_data
    with pytest.MonkeyPatch.context() as mp:
        _use_cluster(mp, slurm_cluster)
        mp.setenv("CIFAR_DIST_CPU_PROCS", "2")
        sub = subprocess.run(
            ["sbatch", "--parsable", "--nodes=1", "--gpus-per-node=0", "--cpus-per-task=2", "--time=10",
             f"--output={tmp_path}/%j.out", "slurm/train.sh", "--preset=smoke", f"--data.dir={data_dir}",
             f"--data.name={name}", "--data.val_size=100", "--run.epochs=1", "--run.progress=false",
             f"--run.out_dir={tmp_path / 'runs'}", "--run.name=two"],
            capture_output=True, text=True, check=True)
        job = sub.stdout.strip()
        _wait_job(slurm_cluster, job, tmp_path)
    log = (tmp_path / f"{job}.out").read_text()
    assert [(r["JobState"], r["ExitCode"]) for r in _jobcomp(slurm_cluster, job)] == [("COMPLETED", "0:0")], log
    assert "train.sh: 1 node(s) x 2 process(es) (0 usable GPUs per node), main 127.0.0.1:" in log  # NodeAddr
    assert f"(node {slurm_cluster.node})" in log and "train.sh: finished (" in log
    assert "processes 2 (DistributedType.MULTI_CPU" in log
    result = json.loads((tmp_path / "runs" / "two" / "result.json").read_text())
    assert (result["world_size"], result["epochs"]) == (2, 1)


def test_sweep_preempt_requeues_a_running_task_of_a_throttled_array_and_returns_at_once(
        slurm_cluster, tiny_data, tmp_path):
    """`cifar-dist sweep preempt SPEC 0` on a `%1` array whose task 1 is still pending (where SLURM 22.05's
    `scancel --signal=USR1 --batch` keeps re-sending and fails): returns in seconds with one line, the trainer
    saves a checkpoint mid-run, the task is requeued (the log says so) and its next attempt resumes."""
    spec = _spec(tmp_path / "thr.yaml", "thr", tiny_data, """\
  run.epochs: 3
  run.global_batch_size: 10
grid:
  optim.lr: [1.0e-3, 2.0e-3]
parallel: 1
sbatch: [--cpus-per-task=1, --gpus-per-node=0, --time=10]
""")
    run = tmp_path / "runs" / "thr" / "c000-s0"
    logs = tmp_path / "runs" / "thr" / "slurm"
    with pytest.MonkeyPatch.context() as mp:
        _use_cluster(mp, slurm_cluster)
        rc, out = _sweep("submit", str(spec))
        assert rc == 0, out
        job = _job_id(out)
        task = f"{job}_0"
        try:
            _wait_for(lambda: (run / "metrics.jsonl").is_file(), "the first epoch", poll=0.05)
            assert f"{job}_1|PENDING" in slurm_cluster.jobs()  # the %1 limit holds task 1 back
            start = time.monotonic()
            rc, said = _sweep("preempt", str(spec), "0")
            seconds = time.monotonic() - start
            assert rc == 0, said
            # task 1 may otherwise take the %1 slot first and train all its epochs before task 0 comes back
            slurm_cluster.run("scontrol", "hold", f"{job}_1")
            log = logs / f"{task}.out"
            _wait_for(lambda: "SLURM requeued" in log.read_text(), "the first attempt to end", timeout=90)
            state = json.loads((run / "checkpoints" / "last" / "train_state.json").read_text())
            _wait_for(lambda: [slurm_cluster.start_now(task), "attempt 2" in log.read_text()][1],
                      "the requeued attempt to start", timeout=120, poll=0.5)
        finally:
            slurm_cluster.run("scancel", job, check=False)
    assert seconds < 5, seconds
    assert said == (f"sweep thr: requeued {task} (c000-s0): its trainer got SIGTERM and saves a checkpoint; "
                    "the task waits in the queue and its next attempt resumes from that checkpoint\n")
    text = log.read_text()
    first = text.split("attempt 2")[0]
    assert re.search(r"stopped by signal at epoch \d step \d+; checkpoint saved", first), first
    assert f"sweep.sh: c000-s0 stopped by SIGTERM (exit 3); SLURM requeued {task}: its next attempt resumes " \
           "from the checkpoint" in first
    assert state["epoch"] >= 1
    assert json.loads((run / "sweep_task.json").read_text())["job"] == task
