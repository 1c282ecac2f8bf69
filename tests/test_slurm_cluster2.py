"""Cluster-grade SLURM: two nodes, preemption of a multi-node job, GPU-less partitions, dying trainers.

Unit tests first (no cluster): what `sweep submit` asks for from sinfo's view of a partition, the
trainer's status file, and the launch files. Then `slurm`-marked tests on real daemons
(tests/slurm_cluster.py): `slurm_two_nodes` is a cluster of two slurmd on this host, 1 CPU each and no
GPU gres (so any GPU request is refused, as on a CPU-only cluster); `slurm_cluster` is the one-node,
4-CPU, 4-fake-GPU cluster of tests/test_slurm.py. Runs use the tiny dataset and the smoke preset.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from cifar_dist.run_dir import RunDir
from cifar_dist.sweep.cluster import gpu_count, parse_sinfo, task_resources
from tests.helpers import REPO
from tests.slurm_cluster import Cluster
from tests.test_slurm import _jobcomp, _metrics, _spec, _sweep, _use_cluster, _wait_for, _wait_job

TIMEOUT = 420

# ------------------------------------------------------------------------------------------ units


GPU_CLUSTER = """\
gpu01|gpu*|64|gpu:a100:8(S:0-1)
gpu02|gpu*|32|gpu:a100:4(S:0-1)
cpu01|cpu|16|(null)
cpu02|cpu|8|(null)
"""
CPU_CLUSTER = "n1|debug*|1|(null)\nn2|debug*|1|(null)\n"


def test_gpu_count_reads_sinfo_gres_strings():
    assert gpu_count("gpu:a100:4(S:0-1)") == 4
    assert gpu_count("gpu:2,gpu:v100:1") == 3
    assert gpu_count("gpu") == 1
    assert gpu_count("(null)") == gpu_count("") == 0
    assert gpu_count("shard:8,gpu:h100:2(S:0)") == 2


def test_parse_sinfo_marks_the_default_partition():
    nodes = parse_sinfo(GPU_CLUSTER + "garbage line\n")
    assert [(n.name, n.partition, n.default, n.cpus, n.gpus) for n in nodes] == [
        ("gpu01", "gpu", True, 64, 8), ("gpu02", "gpu", True, 32, 4), ("cpu01", "cpu", False, 16, 0),
        ("cpu02", "cpu", False, 8, 0)]


@pytest.mark.parametrize("given, sinfo, expected", [
    ([], GPU_CLUSTER, ["--gpus-per-node=1", "--cpus-per-task=8"]),  # default partition has GPUs
    (["--partition=cpu"], GPU_CLUSTER, ["--cpus-per-task=2"]),  # no GPU where the spec sends it
    (["-p", "cpu"], GPU_CLUSTER, ["--cpus-per-task=2"]),
    ([], CPU_CLUSTER, ["--cpus-per-task=1"]),  # GPU-less, 1 CPU per node: nothing the nodes lack
    (["--cpus-per-task=4"], GPU_CLUSTER, ["--gpus-per-node=1"]),  # the spec's value wins
    (["-c2"], GPU_CLUSTER, ["--gpus-per-node=1"]),
    (["--gpus-per-node=0"], GPU_CLUSTER, ["--cpus-per-task=2"]),  # GPUs turned off by hand
    (["--gres=gpu:2"], GPU_CLUSTER, ["--cpus-per-task=8"]),
    ([], "gpu01|gpu*|4|gpu:a100:8\n", ["--gpus-per-node=1", "--cpus-per-task=4"]),  # never above the node
    (["--partition=nope"], GPU_CLUSTER, []),  # unknown partition: sbatch will say so
    ([], None, []),  # no sinfo: ask for nothing beyond SLURM's defaults
])
def test_task_resources_follow_the_partition(given, sinfo, expected):
    assert task_resources(given, sinfo) == expected


def test_status_file_is_written_by_rank_0_only(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    RunDir(tmp_path).write_status(3)
    assert RunDir(tmp_path).read_status() is None
    monkeypatch.setenv("RANK", "0")
    RunDir(tmp_path).write_status(3)
    record = RunDir(tmp_path).read_status()
    assert (record["exit"], record["state"]) == (3, "stopped")
    monkeypatch.delenv("RANK")  # a single process without a launcher
    RunDir(tmp_path).write_status(0)
    assert RunDir(tmp_path).read_status()["state"] == "finished"
    # one line the scripts can read with sed
    text = (tmp_path / "status.json").read_text()
    assert text.count("\n") == 1 and re.search(r'"exit": 0\b', text)


def _launch_files() -> dict[str, dict]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted((REPO / "launch").glob("*.yaml"))}


def test_launch_files_carry_no_gpu_ids_or_counts_the_scripts_do_not_override():
    files = _launch_files()
    assert set(files) >= {"1gpu.yaml", "cpu.yaml", "multi_gpu.yaml", "multi_node.yaml"}
    scripts = {name: (REPO / "slurm" / name).read_text() for name in ("sweep.sh", "train.sh")}
    for name, cfg in files.items():
        # no constant GPU list: SLURM's CUDA_VISIBLE_DEVICES must stand
        assert str(cfg.get("gpu_ids", "all")) == "all", (name, cfg.get("gpu_ids"))
        if cfg["distributed_type"] == "NO":
            assert cfg.get("num_processes", 1) == 1 and cfg.get("num_machines", 1) == 1, name
            continue
        # every multi-process file the scripts use gets --num_processes from them
        code = "\n".join(ln for text in scripts.values() for ln in text.splitlines() if not ln.lstrip().startswith("#"))
        uses = [m.end() for m in re.finditer(re.escape(f'--config_file "$ROOT/launch/{name}"'), code)]
        for at in uses:
            command = code[at:code.index("-m cifar_dist.train", at)]
            assert "--num_processes" in command, (name, command)
        if name != "cpu.yaml":  # cpu.yaml's 2 is the documented default of a by-hand CPU DDP run
            assert "num_processes" not in cfg, name  # accelerate then refuses to guess
    assert not {"num_machines", "machine_rank", "num_processes"} & set(files["multi_node.yaml"])
    # bf16 files used on CPU nodes are overridden: train.sh passes --mixed_precision no without GPUs
    assert files["multi_node.yaml"]["mixed_precision"] == "bf16"
    assert 'precision=(--mixed_precision no)' in scripts["train.sh"]
    assert files["cpu.yaml"]["mixed_precision"] == "no"


def test_train_sh_on_cpu_nodes_runs_fp32_and_counts_processes(tmp_path):
    """Dry run without GPUs: --mixed_precision no overrides multi_node.yaml's bf16; the process count comes
    from the nodes x CIFAR_DIST_CPU_PROCS; the main address falls back to the node name without SLURM."""
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=reference\nSlurmctldHost=localhost\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CIFAR_DIST_", "SBATCH_"))}
    env.update(SLURM_CONF=str(conf), SLURM_JOB_ID="5", SLURM_NNODES="3", SLURM_JOB_NODELIST="cpu[1-3]",
               CIFAR_DIST_PYTHON=sys.executable, CIFAR_DIST_ROOT=str(REPO), CIFAR_DIST_DRY_RUN="1",
               CIFAR_DIST_CPU_PROCS="2", CIFAR_DIST_GPUS="0")
    out = subprocess.run(["bash", str(REPO / "slurm" / "train.sh"), "--preset=smoke"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--num_machines 3 --num_processes 6 --main_process_ip cpu1" in out.stdout
    assert "--mixed_precision no -m cifar_dist.train --preset=smoke --run.allow_cpu=true --resume=auto" in out.stdout


# ------------------------------------------------------------------------------------------ real clusters


def _sbatch(cluster: Cluster, *args: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, check=True,
                         env=env or {**os.environ, "SLURM_CONF": str(cluster.conf)})
    return out.stdout.strip().split(";")[0]


def _train_sh(cluster: Cluster, data, out: Path, name: str, *extra: str) -> str:
    """sbatch slurm/train.sh on both nodes of `cluster` (one CPU process each: world size 2)."""
    data_dir, data_name = data
    return _sbatch(cluster, "--nodes=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=10",
                   f"--output={out}/{name}-%j.out", "slurm/train.sh", "--preset=smoke", f"--data.dir={data_dir}",
                   f"--data.name={data_name}", "--data.val_size=100", "--run.epochs=3", "--run.global_batch_size=10",
                   "--run.log_every_steps=2", "--run.progress=false", f"--run.out_dir={out}", f"--run.name={name}",
                   *extra)


def _weights(run_dir: Path):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "checkpoints" / "last" / "model.safetensors"))


def _untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "epoch_s")} for r in rows]


@pytest.fixture(scope="module")
def two_node_reference(slurm_two_nodes, tiny_data, tmp_path_factory):
    """An uninterrupted `sbatch --nodes=2 slurm/train.sh` run (the reference for the preempted one)."""
    out = tmp_path_factory.mktemp("two_nodes")
    with pytest.MonkeyPatch.context() as mp:
        _use_cluster(mp, slurm_two_nodes)
        job = _train_sh(slurm_two_nodes, tiny_data, out, "ref")
        _wait_job(slurm_two_nodes, job, out)
    return SimpleNamespace(job=job, out=out, run=out / "ref", log=(out / f"ref-{job}.out").read_text())


@pytest.mark.slurm
def test_train_sh_on_two_nodes_runs_world_size_2(two_node_reference, slurm_two_nodes):
    r = two_node_reference
    assert [(row["JobState"], row["ExitCode"]) for row in _jobcomp(slurm_two_nodes, r.job)] == [
        ("COMPLETED", "0:0")], r.log
    assert "train.sh: 2 node(s) x 1 process(es) (0 usable GPUs per node), main 127.0.0.1:" in r.log
    assert f"(node {slurm_two_nodes.nodes[0]})" in r.log
    assert "processes 2 (DistributedType.MULTI_CPU" in r.log
    # rank 0 of node 0 only: one banner, one line per epoch, no launcher noise
    lines = r.log.splitlines()
    assert sum(ln.startswith("cifar_dist: smoke | ") for ln in lines) == 1, r.log
    assert [ln.split()[0] for ln in lines if ln.startswith("epoch=")] == ["epoch=1", "epoch=2", "epoch=3"], r.log
    assert not [ln for ln in lines if any(n in ln for n in NOISE)], r.log  # (a rank's teardown abort showed here)
    env = json.loads((r.run / "env.json").read_text())
    assert env["world_size"] == 2
    result = json.loads((r.run / "result.json").read_text())
    assert (result["world_size"], result["epochs"], result["status"]) == (2, 3, "finished")
    assert json.loads((r.run / "status.json").read_text())["exit"] == 0
    assert [row["epoch"] for row in _metrics(r.run)] == [1, 2, 3]


@pytest.mark.slurm
def test_two_node_job_preempted_mid_epoch_checkpoints_requeues_and_matches_uninterrupted_run(
        two_node_reference, slurm_two_nodes, tiny_data):
    """USR1 to the batch shell (as SLURM sends before the time limit): the shell passes it to both nodes'
    trainers (scancel --signal=USR1), both save their part of the checkpoint mid-epoch and exit 3, the job
    requeues itself, resumes, and ends with the uninterrupted run's metrics and weights."""
    out = two_node_reference.out
    run = out / "cut"
    with pytest.MonkeyPatch.context() as mp:
        _use_cluster(mp, slurm_two_nodes)
        job = _train_sh(slurm_two_nodes, tiny_data, out, "cut")
        try:
            _wait_for(lambda: (run / "metrics.jsonl").is_file(), "the first epoch", timeout=TIMEOUT, poll=0.05)
            slurm_two_nodes.run("scancel", "--signal=USR1", "--batch", job)
            _wait_for(lambda: (RunDir(run).read_status() or {}).get("exit") == 3, "the trainers to stop",
                      timeout=120, poll=0.1)
            state = json.loads((run / "checkpoints" / "last" / "train_state.json").read_text())
            saved = sorted(p.name for p in (run / "checkpoints" / "last").glob("rng_*.pt"))
            # the requeued job may wait in PD (BeginTime): let it start at once
            _wait_for(lambda: [slurm_two_nodes.start_now(job), (run / "result.json").is_file()][1],
                      "the resumed run to finish", timeout=TIMEOUT, poll=0.5)
            _wait_job(slurm_two_nodes, job, out)
        finally:
            slurm_two_nodes.run("scancel", job, check=False)
    log = (out / f"cut-{job}.out").read_text()
    assert (state["epoch"], state["step_in_epoch"] > 0) == (1, True), state  # mid-epoch 2
    assert saved == ["rng_0.pt", "rng_1.pt"]  # both ranks wrote their part
    assert "train.sh: got SIGUSR1; asking the trainer(s) to save a checkpoint and stop" in log
    stop = re.search(r"stopped by signal at epoch 2 step (\d+); checkpoint saved", log)
    assert stop, log
    assert f"train.sh: stopped (exit 3); requeueing job {job} to resume from the checkpoint" in log
    # (each node's first process prints the banner, so lines may come twice: compare sets)
    assert set(re.findall(r"resumed at epoch \d+ step \d+", log)) == {f"resumed at epoch 2 step {stop.group(1)}"}
    starts = log.split("train.sh: 2 node(s) x 1 process(es)")[1:]
    assert len(starts) == 2 and all("processes 2 (DistributedType.MULTI_CPU" in part for part in starts)
    assert "resumed at epoch" not in starts[0]
    rows = _metrics(run)
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 30), (2, 60), (3, 90)]
    ref = two_node_reference.run
    assert _untimed(rows) == _untimed(_metrics(ref))
    a, b = _weights(ref), _weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"weights differ after the preempted run resumed: {k}"
    attempts = [(r["JobState"], r["ExitCode"]) for r in _jobcomp(slurm_two_nodes, job)]
    assert attempts[-1] == ("COMPLETED", "0:0") and len(attempts) == 2, attempts


@pytest.mark.slurm
def test_submit_without_sbatch_options_completes_on_a_gpu_less_cluster(slurm_two_nodes, tiny_data, tmp_path):
    """A 2-cell grid, no `sbatch:` list, submitted from a shell without the project's python on PATH and
    without CIFAR_DIST_PYTHON: submit asks for no GPU and 1 CPU (what the nodes have); tasks run the
    submitting interpreter."""
    spec = _spec(tmp_path / "cpu.yaml", "cpu", tiny_data, "  run.epochs: 1\ngrid:\n  optim.lr: [1.0e-3, 2.0e-3]\n")
    with pytest.MonkeyPatch.context() as mp:
        _use_cluster(mp, slurm_two_nodes, python=False)
        rc, out = _sweep("submit", str(spec))
        assert rc == 0, out
        job = re.search(r"submitted job array (\d+)", out).group(1)
        _wait_job(slurm_two_nodes, job, tmp_path / "runs" / "cpu" / "slurm")
    assert " --cpus-per-task=1 slurm/sweep.sh " in out and "--gpus" not in out
    rows = _jobcomp(slurm_two_nodes, job)
    assert {(r["JobState"], r["ExitCode"]) for r in rows} == {("COMPLETED", "0:0")} and len(rows) == 2
    for i in range(2):
        assert json.loads((tmp_path / "runs" / "cpu" / f"c00{i}-s0" / "sweep_task.json").read_text())["state"] == "done"
        log = (tmp_path / "runs" / "cpu" / "slurm" / f"{job}_{i}.out").read_text()
        assert f"sweep.sh: {sys.executable} -m cifar_dist.train" in log


def _trainer_pids(out_dir: Path) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"cifar_dist.train .*--run.out_dir={out_dir}"], capture_output=True,
                           text=True)
    return [int(p) for p in found.stdout.split()]


@pytest.mark.slurm
def test_sweep_sh_ends_when_its_trainer_dies_of_a_signal(slurm_cluster, tiny_data, tmp_path):
    """A trainer killed by SIGKILL (status 137, no status.json), once after a USR1 (the case that made the
    old wait loop spin under bash 5.2) and once without: the script ends at once each time; requeues after
    the USR1, records a failure with the trainer's status otherwise."""
    spec = _spec(tmp_path / "kill.yaml", "kill", tiny_data, "  run.epochs: 20\n  run.global_batch_size: 10\n")
    run = tmp_path / "runs" / "kill" / "c000-s0"
    logs = tmp_path / "runs" / "kill" / "slurm"
    with pytest.MonkeyPatch.context() as mp:
        _use_cluster(mp, slurm_cluster)
        rc, out = _sweep("submit", str(spec), "--", "--gpus-per-node=0", "--cpus-per-task=1")
        assert rc == 0, out
        job = re.search(r"submitted job array (\d+)", out).group(1)
        task = f"{job}_0"
        log = logs / f"{task}.out"
        try:
            _wait_for(lambda: (run / "env.json").is_file() and _trainer_pids(run.parent), "the trainer",
                      timeout=TIMEOUT)
            first = _trainer_pids(run.parent)
            slurm_cluster.run("scancel", "--signal=USR1", "--batch", task)
            for pid in first:
                os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            _wait_for(lambda: "requeueing" in log.read_text(), "the script to requeue", timeout=60)
            assert time.monotonic() - killed < 30
            # second attempt: killed without any stop request
            _wait_for(lambda: [slurm_cluster.start_now(task), set(_trainer_pids(run.parent)) - set(first)][1],
                      "the second attempt's trainer", timeout=TIMEOUT, poll=0.5)
            for pid in _trainer_pids(run.parent):
                os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            _wait_job(slurm_cluster, job, logs, timeout=60)
            assert time.monotonic() - killed < 30
        finally:
            slurm_cluster.run("scancel", job, check=False)
    text = log.read_text()
    assert "sweep.sh: got SIGUSR1" in text
    assert f"sweep.sh: c000-s0 stopped (exit 137); requeueing {task} to resume from the checkpoint" in text
    assert "sweep.sh: c000-s0 failed: trainer exit status 137, no result.json" in text
    assert json.loads((run / "sweep_task.json").read_text())["state"] == "failed"
    assert [(r["JobState"], r["ExitCode"]) for r in _jobcomp(slurm_cluster, job)][-1] == ("FAILED", "137:0")


@pytest.mark.slurm
def test_a_python_without_the_project_fails_with_one_line(slurm_cluster, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: nopy\npreset: smoke\nout_dir: {tmp_path}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "CIFAR_DIST_"))}
    env.update(SLURM_CONF=str(slurm_cluster.conf), CIFAR_DIST_PYTHON="/usr/bin/python3")
    job = _sbatch(slurm_cluster, "--array=0", "--gpus-per-node=0", f"--output={tmp_path}/%A_%a.out",
                  "slurm/sweep.sh", str(spec), env=env)
    _wait_job(slurm_cluster, job, tmp_path, timeout=120)
    lines = (tmp_path / f"{job}_0.out").read_text().splitlines()
    errors = [ln for ln in lines if "index 0, job" not in ln]  # after the task's first line: one error
    assert len(errors) == 1, lines
    assert re.fullmatch(r"sweep\.sh: /usr/bin/python3 cannot import .*torch.*; set CIFAR_DIST_PYTHON to the "
                        r"python of cifar_dist's environment", errors[0]), errors
    assert [(r["JobState"], r["ExitCode"]) for r in _jobcomp(slurm_cluster, job)] == [("FAILED", "2:0")]


@pytest.mark.slurm
def test_one_process_accelerate_path_checkpoints_on_scancel_and_resubmit_finishes(
        slurm_cluster, tiny_data, tmp_path):
    """The 1-GPU launcher path (accelerate launch, distributed_type NO: Popen, no signal forwarding), taken
    with CIFAR_DIST_GPUS=1 on a CPU: `scancel` sends TERM to every process of the task; the launcher ignores
    it, the trainer checkpoints mid-epoch and exits 3, sweep.sh records status 3 (not the launcher's 1)
    and does not requeue; a resubmit resumes and finishes with every epoch once."""
    spec = _spec(tmp_path / "one.yaml", "one", tiny_data, """\
  run.epochs: 3
  run.global_batch_size: 10
  run.log_every_steps: 2
  run.mixed_precision: "no"
sbatch: [--gpus-per-node=0, --cpus-per-task=1, --time=10]
""")
    run = tmp_path / "runs" / "one" / "c000-s0"
    logs = tmp_path / "runs" / "one" / "slurm"
    with pytest.MonkeyPatch.context() as mp:
        _use_cluster(mp, slurm_cluster)
        mp.setenv("CIFAR_DIST_GPUS", "1")  # take the 1-GPU launch path on this CPU
        rc, out = _sweep("submit", str(spec))
        assert rc == 0, out
        job = re.search(r"submitted job array (\d+)", out).group(1)
        try:
            _wait_for(lambda: (run / "metrics.jsonl").is_file(), "the first epoch", timeout=TIMEOUT, poll=0.05)
            slurm_cluster.run("scancel", f"{job}_0")
            _wait_job(slurm_cluster, job, logs, timeout=120)
        finally:
            slurm_cluster.run("scancel", job, check=False)
        first = (logs / f"{job}_0.out").read_text()
        task = json.loads((run / "sweep_task.json").read_text())
        state = json.loads((run / "checkpoints" / "last" / "train_state.json").read_text())
        mp.delenv("CIFAR_DIST_GPUS")
        rc, out = _sweep("submit", str(spec))
        assert rc == 0, out
        again = re.search(r"submitted job array (\d+)", out).group(1)
        _wait_job(slurm_cluster, again, logs)
    assert "--config_file " + str(REPO / "launch" / "1gpu.yaml") in first
    assert "processes 1 (DistributedType.NO" in first
    assert re.search(r"stopped by signal at epoch [23] step \d+; checkpoint saved", first), first
    assert "sweep.sh: c000-s0 stopped by SIGTERM (exit 3)" in first and "requeueing" not in first
    assert (task["state"], task["exit"]) == ("preempted", 3)
    assert state["step_in_epoch"] > 0  # mid-epoch
    assert "Traceback" not in first  # --quiet: no CalledProcessError from the launcher
    assert [r["epoch"] for r in _metrics(run)] == [1, 2, 3]
    assert json.loads((run / "sweep_task.json").read_text())["state"] == "done"


@pytest.mark.slurm
def test_train_sh_refuses_a_bad_flag_with_one_line_before_starting_any_node(
        slurm_two_nodes, tiny_data, tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        _use_cluster(mp, slurm_two_nodes)
        job = _train_sh(slurm_two_nodes, tiny_data, tmp_path, "bad", "--optim.lrr=0.1")
        _wait_job(slurm_two_nodes, job, tmp_path, timeout=180)
    lines = (tmp_path / f"bad-{job}.out").read_text().splitlines()
    errors = [ln for ln in lines if not ln.startswith("train.sh: ")]
    assert len(errors) == 1 and errors[0].startswith("error: --optim.lrr: unknown key"), lines
    assert lines == errors, lines  # the srun plan is printed only once the flags are good
    assert [(r["JobState"], r["ExitCode"]) for r in _jobcomp(slurm_two_nodes, job)] == [("FAILED", "2:0")]
    assert not (tmp_path / "bad" / "status.json").exists()


SIGNAL_PROBE = """\
import json, os, sys
def dispositions(pid):
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.rstrip("\\n").split(":\\t", 1) for line in f if ":\\t" in line)
    return {k: int(fields[k], 16) for k in ("SigIgn", "SigCgt")}
if os.environ.get("RANK", "0") == "0":
    with open(sys.argv[1], "w") as f:
        json.dump({"agent": dispositions(os.getppid()), "worker": dispositions(os.getpid())}, f)
"""


def test_torchrun_agent_started_as_the_scripts_do_leaves_term_and_usr1_ignored(tmp_path):
    """The launcher the scripts start (slurm/lib.sh's environment and start_child: USR1 and TERM ignored) with
    2 CPU processes: torchrun's agent (the `accelerate launch` process, parent of the workers) must neither
    catch TERM nor USR1 (bits 14 and 9 of /proc/PID/status SigCgt) but keep them ignored (SigIgn), so a
    cancel or requeue reaches only the trainers and the agent prints no "Received 15 death signal"."""
    probe = tmp_path / "probe.py"
    probe.write_text(SIGNAL_PROBE)
    out = tmp_path / "signals.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHELASTIC_", "PET_"))}
    script = ('PY="$1"; SCRIPT=probe; source slurm/lib.sh; start_child "$PY" -m accelerate.commands.launch --quiet '
              '--config_file launch/cpu.yaml --num_processes 2 --main_process_port "$2" "$3" "$4"; wait_child; exit $RC')
    port = str(20000 + os.getpid() % 20000)
    done = subprocess.run(["bash", "-c", script, "probe", sys.executable, port, str(probe), str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(out.read_text())
    term, usr1 = 1 << (signal.SIGTERM - 1), 1 << (signal.SIGUSR1 - 1)
    agent, worker = found["agent"], found["worker"]
    assert (agent["SigCgt"] & term, agent["SigIgn"] & term) == (0, term), agent
    assert (agent["SigCgt"] & usr1, agent["SigIgn"] & usr1) == (0, usr1), agent
    assert worker["SigIgn"] & (term | usr1) == term | usr1, worker  # until the trainer installs its handler


NOISE = ("Invalid job id", "scancel --signal", "death signal", "Exited with exit code", "FAILED", "exitcode",
         "Traceback", "FutureWarning", "config changed", "srun: ", "terminate called")  # srun --quiet: no "Job step aborted" etc.


def _train_sh_2procs(cluster: Cluster, data, out: Path, name: str) -> str:
    """sbatch slurm/train.sh on the one-node cluster: srun -> accelerate launch -> torchrun, 2 CPU processes."""
    data_dir, data_name = data
    env = {**os.environ, "SLURM_CONF": str(cluster.conf), "CIFAR_DIST_CPU_PROCS": "2",
           "CIFAR_DIST_PYTHON": sys.executable}
    return _sbatch(cluster, "--nodes=1", "--gpus-per-node=0", "--cpus-per-task=2", "--time=10",
                   f"--output={out}/{name}-%j.out", "slurm/train.sh", "--preset=smoke", f"--data.dir={data_dir}",
                   f"--data.name={data_name}", "--data.val_size=100", "--run.epochs=4", "--run.global_batch_size=10",
                   "--run.progress=false", f"--run.out_dir={out}", f"--run.name={name}", env=env)


@pytest.mark.slurm
@pytest.mark.parametrize("how", ["scancel", "scontrol requeue"])
def test_train_sh_cancel_and_requeue_logs_say_one_line_without_launcher_noise(
        how, slurm_cluster, tiny_data, tmp_path):
    """`scancel JOB` and `scontrol requeue JOB` (preemption by hand) on a 2-process torchrun job: the trainers
    checkpoint; the log ends with one train.sh line saying what happened (written before the requeue) and holds
    no bogus scancel error, no torchrun FAILED report or "death signal", no srun exit-code line, no warning."""
    run = tmp_path / "q"
    with pytest.MonkeyPatch.context() as mp:
        _use_cluster(mp, slurm_cluster)
        job = _train_sh_2procs(slurm_cluster, tiny_data, tmp_path, "q")
        log = tmp_path / f"q-{job}.out"
        try:
            _wait_for(lambda: (run / "metrics.jsonl").is_file(), "the first epoch", timeout=TIMEOUT, poll=0.05)
            slurm_cluster.run(*how.split(), job)
            _wait_for(lambda: "train.sh: stopped by SIGTERM" in log.read_text(), "the closing line", timeout=90)
        finally:
            if how != "scancel":
                slurm_cluster.run("scancel", job, check=False)
        _wait_job(slurm_cluster, job, tmp_path, timeout=90)
    text = log.read_text().split("attempt 2")[0]
    lines = text.splitlines()
    assert not [ln for ln in lines if any(n in ln for n in NOISE)], text
    assert sum(ln.startswith("cifar_dist: smoke | ") for ln in lines) == 1, text
    assert re.search(r"stopped by signal at epoch \d step \d+; checkpoint saved", text), text
    closing = {"scancel": "train.sh: stopped by SIGTERM (exit 3); submit again to resume",
               "scontrol requeue": f"train.sh: stopped by SIGTERM (exit 3); SLURM requeued job {job}: its next "
                                   "start resumes from the checkpoint"}[how]
    assert closing in lines, text
    assert json.loads((run / "status.json").read_text())["exit"] == 3


@pytest.mark.parametrize("sinfo, parallel, expected", [
    ("n1|debug*|2|(null)\n", 2, ["--cpus-per-task=1"]),  # 2 tasks on one 2-CPU node: 1 CPU each, both run
    ("n1|debug*|2|(null)\n", 1, ["--cpus-per-task=2"]),
    ("n1|debug*|2|(null)\nn2|debug*|2|(null)\n", 2, ["--cpus-per-task=2"]),  # one task per node
    ("n1|debug*|8|(null)\n", 3, ["--cpus-per-task=2"]),  # 8 // 3 = 2: fits, the CPU default caps it
    ("n1|debug*|4|(null)\n", 8, ["--cpus-per-task=1"]),  # never below 1 (the rest wait for a slot)
    ("g1|gpu*|32|gpu:a100:4\n", 8, ["--gpus-per-node=1", "--cpus-per-task=8"]),  # 4 GPUs: 4 at once, 32 // 4
    ("g1|gpu*|16|gpu:a100:4\n", 4, ["--gpus-per-node=1", "--cpus-per-task=4"]),
])
def test_task_cpus_let_parallel_tasks_fit_on_the_nodes(sinfo, parallel, expected):
    assert task_resources([], sinfo, parallel) == expected


@pytest.mark.slurm
def test_train_sh_run_by_hand_on_a_gpu_less_cluster_says_what_to_pass(slurm_two_nodes):
    """Its #SBATCH lines ask for GPUs, which this cluster refuses at submit: run outside a job, train.sh says in
    one line (from sinfo) how to submit it here, exit 2, and starts nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "CIFAR_DIST_"))}
    env["SLURM_CONF"] = str(slurm_two_nodes.conf)
    out = subprocess.run(["bash", "slurm/train.sh", "--preset=smoke", "--run.name=x"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == ("train.sh: submit it: partition debug has no GPUs, so override the #SBATCH GPU request: "
                          "sbatch --nodes=N --gpus-per-node=0 --cpus-per-task=1 slurm/train.sh --preset=smoke "
                          "--run.name=x\n")
    assert slurm_two_nodes.jobs() == []


def test_sweep_sh_creates_the_sweeps_log_folder(tmp_path):
    """SLURM fails a task whose --output folder is missing without a line of log: the first task of an array
    submitted by hand (no `plan`/`submit`) makes runs/<sweep>/slurm/ for the others."""
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: logs\npreset: smoke\nout_dir: {tmp_path / 'runs'}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CIFAR_DIST_", "SBATCH_"))}
    env.update(CIFAR_DIST_PYTHON=sys.executable, CIFAR_DIST_ROOT=str(REPO), CIFAR_DIST_DRY_RUN="1",
               CIFAR_DIST_GPUS="0")
    out = subprocess.run(["bash", str(REPO / "slurm" / "sweep.sh"), str(spec), "0"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "runs" / "logs" / "slurm").is_dir()
