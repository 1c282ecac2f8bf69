"""Search sweeps (`search:` specs, issue 14): spec checks, rungs and costs against Optuna's own pruners, the
workers' study and leases (with tests/fake_trainer.py standing in for the trainer), the report's study,
run.stop_after in the real engine, a real local ASHA sweep on tiny data, and a preempted SLURM array task."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cifar_dist import sweep
from cifar_dist.cli.sweep import main as sweep_main
from cifar_dist.run_dir import RunDir, load_trials, trial_name
from cifar_dist.sweep.plan import load_sweep
from cifar_dist.sweep.search import trial_epochs
from cifar_dist.sweep.spec import load_spec
from cifar_dist.sweep.study import claim, claims_lock, lease_is_stale, open_study
from tests.helpers import REPO

PY = sys.executable
FAKE = [PY, str(REPO / "tests" / "fake_trainer.py")]

SPACE = """\
random:
  params:
    optim.lr: {{loguniform: [1.0e-5, 1.0e-1]}}
grid:
  optim.name: [adam, sgd]
"""


def search_spec(d: Path, trials: int = 8, pruner: str = "asha", heartbeat: float = 1.0, extra: str = "",
                data: tuple[Path, str] | None = None, max_epochs: int = 4, name: str = "srch") -> Path:
    data_dir, data_name = data or (d / "no-data", "tiny")
    text = f"""\
name: {name}
preset: smoke
out_dir: {d / 'runs'}
fixed:
  data.dir: {data_dir}
  data.name: {data_name}
  data.val_size: 100
  data.loader: tensor
  run.global_batch_size: 20
  run.progress: false
{SPACE.format()}search:
  pruner: {pruner}
  objective: val_acc
  trials: {trials}
  epochs: {{min: 1, max: {max_epochs}, reduction_factor: 2}}
  sampler: random
  seed: 3
  heartbeat: {heartbeat}
{extra}"""
    path = d / f"{name}.yaml"
    path.write_text(text)
    return path


def fake_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CIFAR_DIST_"))}
    env.update(PYTHONPATH=str(REPO), CIFAR_DIST_LAUNCH=" ".join(FAKE), **extra)
    return env


def rows_of(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def check_study(sweep_dir: Path, name: str, max_epochs: int) -> list:
    """The study file parses line by line; every trial is finished, asked once, has one run directory whose
    metrics.jsonl holds each epoch once and agrees with the values reported to the study."""
    lines = (sweep_dir / "study.journal").read_text().splitlines()
    assert all(isinstance(json.loads(line), dict) for line in lines)
    trials = load_trials(sweep_dir, name)
    runs = sorted(p.name for p in sweep_dir.iterdir() if p.name.startswith("t") and p.is_dir())
    assert runs == [trial_name(t.number, 0) for t in trials]  # study trial count == runs on disk
    for t in trials:
        assert t.state.name in ("COMPLETE", "PRUNED"), (t.number, t.state)
        rows = rows_of(sweep_dir / trial_name(t.number, 0))
        epochs = [r["epoch"] for r in rows]
        assert epochs == list(range(1, len(rows) + 1))
        assert sorted(t.intermediate_values) == epochs
        assert all(abs(t.intermediate_values[r["epoch"]] - r["val_acc"]) < 1e-9 for r in rows)
        if t.state.name == "COMPLETE":
            assert len(rows) == max_epochs and (sweep_dir / trial_name(t.number, 0) / "result.json").is_file()
        else:
            assert len(rows) < max_epochs
            assert RunDir(sweep_dir / trial_name(t.number, 0)).read_trial()["pruned_at"] == len(rows)
    return trials


# ------------------------------------------------------------------------------------------ spec and plan


def test_plan_prints_rungs_and_costs(tmp_path, capsys):
    spec = search_spec(tmp_path)
    assert sweep_main(["plan", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "asha (SuccessiveHalvingPruner, asynchronous), 8 trials, random sampler (seed 3), maximize val_acc" in out
    assert "rungs at epoch 1, 2; the survivors train to epoch 4" in out
    assert "without pruning 8 x 4 = 32" in out and "worst case 32" in out
    expected = float(out.split("expected ")[1].split()[0])
    assert 8 <= expected < 32
    assert "--array=0-7%8 " in out  # one array task per worker
    record = json.loads((tmp_path / "runs" / "srch" / "sweep.json").read_text())
    assert record["search"]["epochs"] == {"min": 1, "max": 4, "reduction_factor": 2}
    assert record["fixed"]["run.epochs"] == 4 and record["cells"] == []


def test_hyperband_plan_prints_every_bracket(tmp_path, capsys):
    spec = search_spec(tmp_path, pruner="hyperband", max_epochs=8)
    assert sweep_main(["plan", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "bracket 0: rungs at epoch 1, 2, 4;" in out and "bracket 2: rungs at epoch 4;" in out
    assert "bracket 3: rungs at epoch (none: every trial trains to the end)" in out


@pytest.mark.parametrize("pruner", ["asha", "hyperband"])
def test_cost_model_follows_optunas_pruner(tmp_path, pruner):
    """`trial_epochs` (the plan's cost model) against Optuna itself: trials judged one after another with a
    fixed objective at every epoch stop at the same epochs, brackets included."""
    import optuna

    from cifar_dist.sweep.study import make_pruner

    search = load_spec(search_spec(tmp_path, trials=24, pruner=pruner, max_epochs=8)).search
    rng = random.Random(5)
    qualities = [rng.random() for _ in range(search.trials)]
    study = optuna.create_study(study_name="srch", direction="maximize", pruner=make_pruner(search))
    # Optuna's HyperbandPruner sizes its brackets from max_resource; it needs one finished trial before it
    # prunes at all, as its budget is set up lazily: nothing to do for an explicit max_resource.
    got = []
    for q in qualities:
        trial = study.ask()
        epochs = search.max_epochs
        for e in range(1, search.max_epochs + 1):
            trial.report(q, e)
            if e < search.max_epochs and trial.should_prune():
                epochs = e
                break
        study.tell(trial, q if epochs == search.max_epochs else None,
                   state=optuna.trial.TrialState.COMPLETE if epochs == search.max_epochs else
                   optuna.trial.TrialState.PRUNED)
        got.append(epochs)
    assert trial_epochs(search, "srch", qualities) == got
    if pruner == "hyperband":
        pruner_obj = study.pruner
        assert [sweep.search.bracket_of(search, "srch", t.number) for t in study.trials] == [
            pruner_obj._get_bracket_id(study, t) for t in study.trials]


BAD = [
    ("unknown pruner", "pruner: asha", "pruner: median", "search.pruner: expected one of asha, hyperband"),
    ("min epochs above max", "epochs: {min: 1, max: 4,", "epochs: {min: 5, max: 4,",
     "search.epochs.max: expected an integer >= search.epochs.min (5)"),
    ("objective not logged", "data.val_size: 100", "data.val_size: 0",
     "search.objective: expected a metric the runs log every epoch, found 'val_acc is logged only with a "
     "validation split"),
    ("no search space", SPACE.format(), "", "search: expected a search space (grid:, zip: or random.params)"),
    ("two seeds", "search:\n", "seeds: [0, 1]\nsearch:\n", "seeds: expected one seed in a search"),
    ("samples in a search", "  params:\n", "  samples: 3\n  params:\n", "random.samples: expected only params"),
    ("epochs fixed", "  run.progress: false\n", "  run.progress: false\n  run.epochs: 3\n",
     "fixed.run.epochs: expected no run.epochs in a search"),
]


@pytest.mark.parametrize("old,new,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_search_specs_exit_2_with_one_line(tmp_path, capsys, old, new, message):
    spec = search_spec(tmp_path)
    text = spec.read_text()
    assert old in text
    spec.write_text(text.replace(old, new, 1))
    rc = sweep_main(["plan", str(spec)])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: {spec}: "), err
    assert message in err
    assert not (tmp_path / "runs").exists()


def test_shipped_seed002_asha_plans(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sweep_main(["plan", str(REPO / "slurm" / "grids" / "seed002_asha.yaml")]) == 0
    out = capsys.readouterr().out
    assert "64 trials" in out and "rungs at epoch 1, 2, 4, 8, 16; the survivors train to epoch 30" in out
    record = json.loads((tmp_path / "runs" / "seed002_asha" / "sweep.json").read_text())
    space = record["search"]["space"]
    assert space["model.blocks"]["choice"] == [[n, n, n] for n in range(2, 14)]  # n in 2..13 (SEED_SYSTEMS.md)
    assert space["model.k"] == {"choice": [1, 2]}
    assert space["run.global_batch_size"] == {"choice": [32, 64, 128, 256]}
    assert space["optim.lr"] == {"loguniform": [1e-4, 1e-1]}
    assert space["model.dropout"] == space["model.block_dropout"] == {"uniform": [0.0, 0.5]}


def test_resolve_and_sweep_sh_run_a_worker_per_array_task(tmp_path, capsys):
    spec = search_spec(tmp_path)
    assert sweep_main(["resolve", str(spec), "1", "--shell"]) == 0
    shell = capsys.readouterr().out
    assert "worker=1\n" in shell and "run_name=worker-1\n" in shell and "finished=0\n" in shell
    env = {**fake_env(), "CIFAR_DIST_PYTHON": PY, "CIFAR_DIST_ROOT": str(REPO), "CIFAR_DIST_DRY_RUN": "1",
           "SLURM_JOB_ID": "4242", "SLURM_ARRAY_JOB_ID": "4240", "SLURM_ARRAY_TASK_ID": "1"}
    env.pop("CIFAR_DIST_LAUNCH")
    out = subprocess.run(["bash", str(REPO / "slurm" / "sweep.sh"), str(spec)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"trainer launcher: {PY} -m cifar_dist.train" in out.stdout
    assert "sweep.sh: search worker 4240_1; " in out.stdout
    assert f"sweep.sh: {PY} -m cifar_dist sweep worker {spec}\n" in out.stdout  # the worker names itself
    assert sweep_main(["worker", str(spec), "--worker=a/b"]) == 2
    assert "--worker: expected an id without spaces or /, found 'a/b'" in capsys.readouterr().err
    assert sweep_main(["submit", str(spec), "--dry-run", "--parallel", "2"]) == 0
    assert "--array=0-1%2 " in capsys.readouterr().out


def test_a_preempted_slurm_lease_waits_for_its_task():
    search = load_spec_like()
    old = {"lease": "preempted", "worker": "77_0", "host": "elsewhere", "pid": 1, "heartbeat": time.time() - 1e4}
    assert not lease_is_stale(old, search, lambda name: {"by_index": {}, "by_job": {"77_0": "PENDING"}})  # requeued: wait
    assert lease_is_stale(old, search, lambda name: {"by_index": {}, "by_job": {}})  # not queued any more: take it
    assert lease_is_stale(old, search, lambda name: None)  # no squeue: after 3 missed heartbeats
    assert not lease_is_stale({**old, "heartbeat": time.time()}, search, lambda name: None)
    running = {"lease": "running", "worker": "local-1", "host": "elsewhere", "pid": 1, "heartbeat": time.time()}
    assert not lease_is_stale(running, search, None)
    assert lease_is_stale({**running, "heartbeat": time.time() - 4 * search.heartbeat}, search, None)


def test_a_trial_asked_but_never_started_is_failed_and_the_next_one_claimed(tmp_path):
    """A worker that died between study.ask() and writing trial.json leaves a RUNNING trial without a run: the
    next claim marks it failed with the reason (through the storage's public API, by the trial's id there)
    and asks a new trial, whose lease names the same id the study gives it."""
    import optuna

    sw = load_sweep(search_spec(tmp_path, trials=2), count=False)
    study, store = open_study(sw)
    orphan = study.ask()
    with claims_lock(sw):
        got = claim(study, store, sw, "local-0", None, lambda over: "")
    trials = study.get_trials(deepcopy=False)
    assert trials[0].state == optuna.trial.TrialState.FAIL
    assert trials[0].user_attrs["rejected"] == "its worker died before the trial started"
    assert got.number == 1 == trials[1].number and orphan.number == 0 and got.how == "new"
    assert store.get_trial(got.trial_id).number == 1 and RunDir(got.dir).read_trial()["trial_id"] == got.trial_id
    optuna.trial.Trial(study, got.trial_id).report(0.5, 1)  # the worker's reports reach trial 1
    assert study.get_trials(deepcopy=False)[1].intermediate_values == {1: 0.5}


def load_spec_like():
    from cifar_dist.sweep.spec import Search

    return Search("asha", "val_acc", "maximize", 4, 1, 4, 2, "random", 0, 10.0, ())


# ------------------------------------------------------------------------------------------ workers (fake trainer)


@pytest.mark.slow
def test_four_workers_share_one_journal(tmp_path):
    """`sweep run --local --parallel 4` with a fast stand-in trainer: 16 trials, the journal intact."""
    spec = search_spec(tmp_path, trials=16, heartbeat=0.2)
    out = subprocess.run([PY, "-m", "cifar_dist", "sweep", "run", str(spec), "--local", "--parallel", "4"],
                         env=fake_env(FAKE_STEP_S="0.01"), capture_output=True, text=True, timeout=900)
    sweep_dir = tmp_path / "runs" / "srch"
    logs = "".join(p.read_text() for p in sorted((sweep_dir / "logs").glob("local-*.out")))
    assert out.returncode == 0, out.stdout + out.stderr + logs
    trials = check_study(sweep_dir, "srch", 4)
    assert len(trials) == 16
    assert {t.state.name for t in trials} == {"COMPLETE", "PRUNED"}
    assert len({line.split()[1] for line in logs.splitlines() if line.startswith("worker local-")}) == 4
    status = subprocess.run([PY, "-m", "cifar_dist", "sweep", "status", str(spec)], env=fake_env(),
                            capture_output=True, text=True, timeout=300)
    assert status.stdout.startswith("search srch: 16 of 16 trials: ") and " 0 running" in status.stdout

    report = subprocess.run([PY, "-m", "cifar_dist", "report", str(sweep_dir)], env=fake_env(),
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    md = (sweep_dir / "report.md").read_text()
    assert "## Study" in md and "Best trials" in md and "Pruned trials (the rung at which each stopped)" in md
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert md.split("Best trials")[1].split("\n| ")[2].startswith(f"{trial_name(best.number, 0)} |")
    assert "| optim.name=" not in md and "`optim.lr=" in md  # overrides shown per trial
    assert (sweep_dir / "report_plots" / "study.png").stat().st_size > 1000
    pruned = [t for t in trials if t.state.name == "PRUNED"][0]
    run = trial_name(pruned.number, 0)
    assert f"| {run} | {len(rows_of(sweep_dir / run))} |" in md
    assert list((sweep_dir / run).glob("events.out.tfevents.*"))  # HParams of a pruned trial


def _start_worker(spec: Path, me: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "cifar_dist", "sweep", "worker", str(spec), f"--worker={me}"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)


def test_a_stopped_worker_resumes_its_own_trial(tmp_path):
    """SIGTERM mid-trial: the trainer checkpoints, the lease stays with the worker (exit 3); the same worker
    id started again resumes that trial, not a new one, and every epoch is logged once."""
    spec = search_spec(tmp_path, trials=1, heartbeat=0.5)
    started = tmp_path / "started"
    env = fake_env(FAKE_STEP_S="0.2", FAKE_STARTED=str(started))
    proc = _start_worker(spec, "w0", env)
    _wait_for(started, proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    first = proc.communicate(timeout=120)[0]
    assert proc.returncode == 3, first
    run_dir = tmp_path / "runs" / "srch" / "t000-s0"
    record = RunDir(run_dir).read_trial()
    assert record["lease"] == "preempted" and record["worker"] == "w0"
    assert not (run_dir / "result.json").exists()
    second = subprocess.run([PY, "-m", "cifar_dist", "sweep", "worker", str(spec), "--worker=w0"],
                            env=fake_env(FAKE_STEP_S="0.01"), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "trial 0 (resumed)" in second.stdout and "trial 1" not in second.stdout
    trials = check_study(tmp_path / "runs" / "srch", "srch", 4)
    assert len(trials) == 1


def test_a_killed_worker_leaves_its_trial_to_another(tmp_path):
    """kill -9 of a worker: its trainer gets SIGTERM (checkpoint) through PR_SET_PDEATHSIG; another worker on
    the host sees both processes gone, takes the trial over and finishes it; the study counts it once."""
    spec = search_spec(tmp_path, trials=1, heartbeat=0.5)
    started = tmp_path / "started"
    proc = _start_worker(spec, "w0", fake_env(FAKE_STEP_S="0.2", FAKE_STARTED=str(started)))
    _wait_for(started, proc)
    run_dir = tmp_path / "runs" / "srch" / "t000-s0"
    trainer = RunDir(run_dir).read_trial()["trainer_pid"]
    proc.kill()
    proc.communicate(timeout=60)
    end = time.monotonic() + 60
    while trainer and Path(f"/proc/{trainer}").exists() and time.monotonic() < end:
        time.sleep(0.1)
    assert not Path(f"/proc/{trainer}").exists() or "Z" in Path(f"/proc/{trainer}/stat").read_text().split()[2]
    other = subprocess.run([PY, "-m", "cifar_dist", "sweep", "worker", str(spec), "--worker=w1"],
                           env=fake_env(FAKE_STEP_S="0.01"), capture_output=True, text=True, timeout=300)
    assert other.returncode == 0, other.stdout + other.stderr
    assert "trial 0 (taken over)" in other.stdout
    record = RunDir(run_dir).read_trial()
    assert record["worker"] == "w1" and record["takeovers"] == 1 and record["state"] in ("complete", "pruned")
    check_study(tmp_path / "runs" / "srch", "srch", 4)


# ------------------------------------------------------------------------------------------ the real engine


@pytest.mark.slow
def test_stop_after_pauses_and_resume_goes_on(tmp_path, tiny_data):
    data_dir, name = tiny_data
    flags = ["--preset=smoke", f"--data.dir={data_dir}", f"--data.name={name}", "--data.val_size=100",
             "--data.loader=tensor", "--run.global_batch_size=20", "--run.progress=false", "--run.epochs=2",
             f"--run.out_dir={tmp_path}", "--run.name=p", "--resume=auto"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    first = subprocess.run([PY, "-m", "cifar_dist.train", *flags, "--run.stop_after=1"], env=env,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "p"
    assert json.loads((run / "paused.json").read_text()) == {"epoch": 1, "epochs": 2}
    assert not (run / "result.json").exists() and "paused after epoch 1 of 2" in first.stdout
    second = subprocess.run([PY, "-m", "cifar_dist.train", *flags, "--run.stop_after=0"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert not (run / "paused.json").exists() and (run / "result.json").is_file()
    assert [(r["epoch"], r["step"]) for r in rows_of(run)] == [(1, 15), (2, 30)]


@pytest.mark.slow
def test_local_asha_sweep_on_tiny_data(tmp_path, tiny_data, capsys):
    """Issue 14, done when: 8 trials, 2 local workers, the real trainer on tiny data; pruned trials ran fewer
    epochs than the maximum, the best trial trained to the end, and the epochs trained (counted from the run
    directories) stay below the unpruned cost that `plan` prints."""
    spec = search_spec(tmp_path, trials=8, heartbeat=5, data=tiny_data)
    assert sweep_main(["plan", str(spec)]) == 0
    plan_out = capsys.readouterr().out
    unpruned = int(plan_out.split("without pruning 8 x 4 = ")[1].split()[0])
    env = {**fake_env(), "OMP_NUM_THREADS": "1"}
    env.pop("CIFAR_DIST_LAUNCH")
    out = subprocess.run([PY, "-m", "cifar_dist", "sweep", "run", str(spec), "--local", "--parallel", "2"],
                         env=env, capture_output=True, text=True, timeout=3600)
    sweep_dir = tmp_path / "runs" / "srch"
    assert out.returncode == 0, out.stdout + "".join(p.read_text()[-3000:] for p in (sweep_dir / "logs").glob("*"))
    trials = check_study(sweep_dir, "srch", 4)
    assert len(trials) == 8
    epochs = {t.number: len(rows_of(sweep_dir / trial_name(t.number, 0))) for t in trials}
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned and all(epochs[t.number] < 4 for t in pruned)
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert epochs[best.number] == 4
    assert (sweep_dir / trial_name(best.number, 0) / "result.json").is_file()
    assert sum(epochs.values()) < unpruned


# ------------------------------------------------------------------------------------------ SLURM


def _segment_training(run_dir: Path, logs: Path) -> bool:
    """The trial's current trainer session has started training (its banner is printed) and has not ended."""
    log = logs / f"{run_dir.name}.out"
    if not log.is_file():
        return False
    last = log.read_text().rsplit("\n$ ", 1)[-1]
    return "cifar_dist: " in last and "paused after" not in last and "done:" not in last


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_array_with_a_preempted_worker(tmp_path, tiny_data, slurm_cluster):
    """A search as a 2-task array (`sweep submit --parallel 2`) on the real local cluster; task 0 gets USR1
    while its trainer trains a trial; its worker checkpoints the trial and the task requeues itself; after
    the requeue the task resumes the same trial (metrics.jsonl has each epoch once) and the study's trial
    count matches the runs on disk."""
    spec = search_spec(tmp_path, trials=4, heartbeat=5, data=tiny_data, max_epochs=3,
                       extra="parallel: 2\nsbatch: [--cpus-per-task=1, --time=60]\n")
    env = {k: v for k, v in slurm_cluster.env.items() if not k.startswith(("SLURM_", "SBATCH_", "CIFAR_DIST_"))}
    env.update(SLURM_CONF=str(slurm_cluster.conf), PYTHONPATH=str(REPO), CIFAR_DIST_PYTHON=PY, OMP_NUM_THREADS="1")
    sub = subprocess.run([PY, "-m", "cifar_dist", "sweep", "submit", str(spec)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    assert "--array=0-1%2 " in sub.stdout
    job = sub.stdout.split("submitted job array ")[1].split(";")[0].strip()
    sweep_dir, me = tmp_path / "runs" / "srch", f"{job}_0"
    end, target = time.monotonic() + 1200, None
    while target is None:  # task 0's worker holds a trial whose trainer is training
        assert time.monotonic() < end, f"task 0 never trained: {slurm_cluster.jobs()}"
        for run_dir in sorted(sweep_dir.glob("t*-s0")):
            rec = RunDir(run_dir).read_trial()
            if rec.get("worker") == me and rec.get("lease") == "running" and _segment_training(run_dir, sweep_dir
                                                                                               / "logs"):
                target = run_dir
        time.sleep(0.2)
    slurm_cluster.run("scancel", "--signal=USR1", "--batch", me)
    end = time.monotonic() + 2400
    while any(line.split("|")[0].split("_")[0] == job for line in slurm_cluster.jobs()):
        assert time.monotonic() < end, f"job {job} still queued: {slurm_cluster.jobs()}"
        time.sleep(0.3)
    log0 = (sweep_dir / "slurm" / f"{me}.out").read_text()
    assert "requeueing" in log0, log0
    assert log0.count("sweep.sh: search worker") == 2, log0  # the requeued attempt ran
    # The trial the signal stopped: the one seen training, unless its rung ended before USR1 reached its
    # trainer (sweep.sh then signals the worker's next trainer): the worker's log names it either way.
    stopped = re.search(rf"worker {me}: trial (\d+) stopped after", log0)
    assert stopped, log0
    number = int(stopped[1])
    assert number >= int(target.name[1:4]), log0
    target = sweep_dir / trial_name(number, 0)
    assert f"worker {me}: trial {number} (resumed)" in log0, log0
    trial_log = (sweep_dir / "logs" / f"{target.name}.out").read_text()
    stop = re.search(r"stopped by signal at epoch (\d+) step (\d+)", trial_log)  # the trainer checkpointed
    assert stop and f"resumed at epoch {stop[1]} step {stop[2]}" in trial_log, trial_log  # and went on from there
    record = RunDir(target).read_trial()
    assert record["worker"] == me and record["lease"] == "released" and record["state"] in ("complete", "pruned")
    trials = check_study(sweep_dir, "srch", 3)  # each epoch once; study trial count == runs on disk
    assert len(trials) == 4
    states = {(r.get("ArrayJobId"), r.get("ArrayTaskId")): r.get("JobState") for r in slurm_cluster.jobcomp()}
    assert states.get((job, "0")) == "COMPLETED" and states.get((job, "1")) == "COMPLETED", states
