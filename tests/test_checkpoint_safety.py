"""Checkpoints and the run directory under attack and accident: crafted pickles, corrupt files, two runs
with one name, a changed config on resume, torn metrics, a full disk, NaN before the first checkpoint.

Real subprocesses of `python -m cifar_dist.train` on real .beton files; the full disk is a tmpfs this
test mounts and unmounts itself (root needed: where mounting is impossible the test fails and says why).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cifar_dist.engine import checkpoint as ckpt
from cifar_dist.engine.devices import eval_model
from cifar_dist.engine.logs import RunLogger, append_line
from cifar_dist.engine.rundir import RunDirError
from cifar_dist.errors import EXIT_OK
from tests.helpers import REPO, launch_cpu_two, read_json, small_tmpfs
from tests.test_train import metrics, run, train_cmd

# 300 training images, 100 per step: 3 steps per epoch, a checkpoint after every step (so `last` and
# `.last.old` both exist), with the EMA.
BASE = ["--run.global_batch_size=100", "--run.checkpoint_every_steps=1", "--run.log_every_steps=1", "--run.ema=true"]


class Payload:
    """Unpickling this creates `marker`: the proof that a checkpoint file ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory) -> Path:
    """A finished one-epoch run with `last` and `.last.old` (copy it before changing it)."""
    out = tmp_path_factory.mktemp("ckpt_safety")
    p = run(train_cmd(tiny_data, out, "src", "--run.epochs=1", *BASE))
    assert p.returncode == 0, p.stderr[-2000:]
    ckpts = out / "src" / "checkpoints"
    assert (ckpts / "last" / "checkpoint.json").is_file() and (ckpts / ".last.old" / "checkpoint.json").is_file()
    return out / "src"


def copy_run(src: Path, dst_root: Path, name: str) -> Path:
    dst = dst_root / name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def fake_parts(**extra):
    acc = SimpleNamespace(num_processes=1, process_index=0, scaler=None)
    return SimpleNamespace(accelerator=acc, optimizer=object(), schedule=object(), ema=object(), **extra)


# ------------------------------------------------------------------------------------ crafted pickles


def test_checkpoint_files_are_data_only(finished_run):
    last = finished_run / "checkpoints" / "last"
    names = sorted(p.name for p in last.iterdir())
    assert names == ["checkpoint.json", "ema.pt", "model.safetensors", "optimizer.pt", "rng_0.pt", "train_state.json"]
    assert not [n for n in names if n.endswith(".pkl") or n.endswith(".bin")]
    from safetensors.torch import load_file

    keys = load_file(str(last / "model.safetensors")).keys()
    assert keys and not [k for k in keys if k.startswith(("module.", "_orig_mod."))]
    snap = ckpt.read(last, fake_parts())
    assert snap.state.epoch == 1 and snap.rng is not None and snap.meta["world_size"] == 1


@pytest.mark.parametrize("form", ["pickle", "torch_zip"])
def test_a_crafted_pickle_in_any_checkpoint_file_never_runs(finished_run, tmp_path, form):
    """Each file of `last` in turn replaced by a pickle whose loading would create a file: reading the
    checkpoint refuses it with one line naming the file, and the file is never created."""
    marker = tmp_path / "PWNED"
    files = sorted(p.name for p in (finished_run / "checkpoints" / "last").iterdir())
    for name in files:
        d = copy_run(finished_run, tmp_path, f"{form}-{name}")
        target = d / "checkpoints" / "last" / name
        if form == "pickle":
            target.write_bytes(pickle.dumps(Payload(marker)))
        else:
            torch.save(Payload(marker), target)
        with pytest.raises(ckpt.CheckpointError) as e:
            ckpt.read(target.parent, fake_parts())
        msg = e.value.one_line()
        assert str(target) in msg and "\n" not in msg, msg
        assert not marker.exists(), f"unpickling {name} ran code"
        ckpt.read(d / "checkpoints" / ".last.old", fake_parts())  # the fallback is untouched


def add_old_schedule_files(ckpt_dir: Path, marker: Path) -> None:
    """Make `ckpt_dir` look written before schedules became functions of the step: a scheduler.pt (the
    onecycle state that version saved) and a registered_0.pt (an object registered with accelerate), listed
    in checkpoint.json; registered_0.pt is a crafted pickle, so loading it would create `marker`."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    onecycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=9, cycle_momentum=False)
    torch.save({"onecycle": onecycle.state_dict()}, ckpt_dir / "scheduler.pt")
    torch.save(Payload(marker), ckpt_dir / "registered_0.pt")
    meta = read_json(ckpt_dir / "checkpoint.json")
    meta["files"] = sorted(meta["files"] + ["registered_0.pt", "scheduler.pt"])
    (ckpt_dir / "checkpoint.json").write_text(json.dumps(meta))


@pytest.mark.timeout(900)
def test_an_older_checkpoint_with_a_saved_schedule_or_other_objects_resumes(tiny_data, finished_run, tmp_path):
    """Files the reader does not know are never opened: the checkpoint reads and a resume trains on.
    (accelerate's own load_state would refuse such a folder: it wants one custom_checkpoint_<i>.pkl per
    registered object, see test_engine_parts; this reader goes by file name.)"""
    marker = tmp_path / "PWNED"
    d = copy_run(finished_run, tmp_path, "older")
    for sub in ("last", ".last.old"):
        add_old_schedule_files(d / "checkpoints" / sub, marker)
    snap = ckpt.read(d / "checkpoints" / "last", fake_parts())
    assert sorted(snap.tensors) == ["ema.pt", "model.safetensors", "optimizer.pt"] and snap.state.global_step == 3
    p = run(train_cmd(tiny_data, tmp_path, "older", "--run.epochs=2", *BASE, "--resume=auto"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resumed at epoch 2 step 0" in p.stdout and "scheduler.pt" not in p.stdout + p.stderr, p.stdout
    assert read_json(d / "result.json")["status"] == "finished" and metrics(d)[-1]["epoch"] == 2
    assert not marker.exists()


@pytest.mark.timeout(900)  # 241 s on a loaded 2-core machine
@pytest.mark.slow
def test_resume_falls_back_to_last_old_or_stops_with_one_line(tiny_data, finished_run, tmp_path):
    marker = tmp_path / "PWNED"
    # one bad file in `last`: the resume says so in one line and continues from .last.old
    d = copy_run(finished_run, tmp_path, "fallback")
    torch.save(Payload(marker), d / "checkpoints" / "last" / "optimizer.pt")
    p = run(train_cmd(tiny_data, tmp_path, "fallback", "--run.epochs=1", *BASE, "--resume=auto"))
    assert p.returncode == 0, p.stderr[-2000:]
    said = [ln for ln in p.stdout.splitlines() if "optimizer.pt" in ln]
    assert len(said) == 1 and "resumed from" in said[0] and ".last.old" in said[0], p.stdout
    assert "resumed at epoch 1 step 3" in p.stdout  # .last.old: step 3, before the epoch-end one
    assert read_json(d / "result.json")["status"] == "finished"
    assert not marker.exists()

    # RNG states that cannot be restored, in both checkpoints: an error, exit 2, one line naming both files
    d = copy_run(finished_run, tmp_path, "norng")
    (d / "result.json").unlink()
    for sub in ("last", ".last.old"):
        (d / "checkpoints" / sub / "rng_0.pt").write_bytes(pickle.dumps(Payload(marker)))
    p = run(train_cmd(tiny_data, tmp_path, "norng", "--run.epochs=1", *BASE, "--resume=auto"))
    assert p.returncode == 2, p.stderr[-2000:]
    line = one_line(p.stderr)
    assert line.startswith("error: ") and "last/rng_0.pt" in line and ".last.old/rng_0.pt" in line, line
    assert not marker.exists() and not (d / "result.json").exists()

    # a missing file is named the same way
    d = copy_run(finished_run, tmp_path, "missing")
    shutil.rmtree(d / "checkpoints" / ".last.old")
    (d / "checkpoints" / "last" / "ema.pt").unlink()
    p = run(train_cmd(tiny_data, tmp_path, "missing", "--run.epochs=1", *BASE, "--resume=auto"))
    assert p.returncode == 2
    line = one_line(p.stderr)
    assert "last/ema.pt: missing" in line and "no older checkpoint" in line, line


def test_compiled_and_ddp_wrapped_models_save_plain_keys():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    try:
        acc = Accelerator(cpu=True)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
        plain_keys = set(model.state_dict())
        wrapped = acc.prepare(torch.compile(model))  # compiled lazily: nothing runs here
        assert set(eval_model(acc, wrapped).state_dict()) == plain_keys
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


# ------------------------------------------------------------------------------------ one writer


@pytest.mark.timeout(900)  # 234 s on a loaded 2-core machine
@pytest.mark.slow
def test_two_runs_with_one_name_the_second_exits_2_and_kill_9_frees_the_lock(tiny_data, tmp_path):
    cmd = train_cmd(tiny_data, tmp_path, "busy", "--run.epochs=200", "--run.global_batch_size=20")
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        lock = tmp_path / "busy" / ".lock"
        deadline = time.time() + 240
        while time.time() < deadline and first.poll() is None:
            if lock.is_file() and lock.read_text().strip():
                break
            time.sleep(0.1)
        assert first.poll() is None, first.stderr.read()[-2000:]
        holder = json.loads(lock.read_text())
        assert holder["pid"] == first.pid
        second = run(cmd + ["--resume=auto"])
        assert second.returncode == 2
        line = one_line(second.stderr)
        assert f"pid {first.pid}" in line and holder["host"] in line and "in use by another run" in line, line
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    third = run(train_cmd(tiny_data, tmp_path, "busy", "--run.epochs=1", "--run.global_batch_size=20", "--resume=auto"))
    assert third.returncode == 0, third.stderr[-2000:]
    assert json.loads((tmp_path / "busy" / ".lock").read_text())["pid"] != first.pid


# ------------------------------------------------------------------------------------ resume checks


@pytest.mark.timeout(900)  # 102 s on a loaded 2-core machine
@pytest.mark.slow
def test_resume_checks_the_config_and_never_keeps_a_stale_result(tiny_data, finished_run, tmp_path):
    d = copy_run(finished_run, tmp_path, "cfg")
    p = run(train_cmd(tiny_data, tmp_path, "cfg", "--run.epochs=1", *BASE, "--optim.lr=0.5", "--loss.label_smoothing=0.1",
                      "--resume=auto"))
    assert p.returncode == 2
    line = one_line(p.stderr)
    assert "optim.lr" in line and "loss.label_smoothing" in line and "--resume=force" in line, line
    assert "run.epochs" not in line
    assert read_json(d / "result.json")["status"] == "finished"  # refused before anything was touched

    # keys that may change (epochs, logging, TTA, workers) resume; the change is said in one line
    p = run(train_cmd(tiny_data, tmp_path, "cfg", "--run.epochs=2", *BASE, "--run.tta=flip", "--data.num_workers=1",
                      "--run.progress=false", "--resume=auto"))
    assert p.returncode == 0, p.stderr[-2000:]
    said = [ln for ln in p.stdout.splitlines() if ln.startswith("resume: config changed: ")]
    assert len(said) == 1, p.stdout
    for change in ("data.num_workers 2 -> 1", "run.epochs 1 -> 2", 'run.tta "none" -> "flip"', 'run.name "src" -> "cfg"'):
        assert change in said[0], said[0]
    assert [r["epoch"] for r in metrics(d)] == [1, 2]

    # --resume=force accepts anything; this one diverges: exit 4, and the finished result.json is replaced by
    # the diverged one (issue 19: a sweep counts a diverged run and never trains it again)
    p = run(train_cmd(tiny_data, tmp_path, "cfg", "--run.epochs=3", *BASE, "--run.tta=flip", "--data.num_workers=1",
                      "--optim.lr=1e30", "--resume=force"))
    assert p.returncode == 4, p.stderr[-2000:]
    assert "optim.lr" in p.stdout and "--resume=force" in p.stdout
    assert read_json(d / "result.json")["status"] == "diverged"


@pytest.mark.slow
def test_nan_before_any_checkpoint_says_there_is_none(tiny_data, tmp_path):
    p = run(train_cmd(tiny_data, tmp_path, "nan0", "--run.epochs=2", "--optim.name=sgd", "--optim.lr=1e30",
                      "--run.log_every_steps=1"))
    assert p.returncode == 4, p.stderr[-2000:]
    line = one_line(p.stderr)
    assert "non-finite loss" in line and "no checkpoint was saved yet" in line and "kept in" not in line, line
    assert not (tmp_path / "nan0" / "checkpoints" / "last").exists()
    assert read_json(tmp_path / "nan0" / "result.json")["status"] == "diverged"  # issue 19


@pytest.mark.slow
def test_torn_metrics_line_is_repaired_and_events_keep_every_point(tiny_data, finished_run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    d = copy_run(finished_run, tmp_path, "torn")
    with (d / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 2, "step": 6, "train_lo')
    p = run(train_cmd(tiny_data, tmp_path, "torn", "--run.epochs=2", *BASE, "--resume=auto"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "dropped an incomplete last line" in p.stdout
    rows = metrics(d)
    assert [r["epoch"] for r in rows] == [1, 2]
    acc = EventAccumulator(str(d), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in acc.Scalars("epoch/test_acc")] == [1, 2]
    assert [e.value for e in acc.Scalars("epoch/test_acc")] == pytest.approx([r["test_acc"] for r in rows], abs=1e-4)
    assert len(acc.Tensors("model/params/text_summary")) == 1 and len(acc.Tensors("run/result/text_summary")) == 1
    assert [e.step for e in acc.Scalars("epoch/wall_s")] == [1, 2]
    assert len(list(d.glob("events.out.tfevents.*"))) == 1  # this session's file (hparams included)


@pytest.mark.slow
def test_a_bad_line_inside_metrics_is_an_error_naming_it(tiny_data, finished_run, tmp_path):
    d = copy_run(finished_run, tmp_path, "midbad")
    text = (d / "metrics.jsonl").read_text()
    (d / "metrics.jsonl").write_text("not json\n" + text)
    p = run(train_cmd(tiny_data, tmp_path, "midbad", "--run.epochs=1", *BASE, "--resume=auto"))
    assert p.returncode == 2
    assert f"{d / 'metrics.jsonl'}:1: expected one JSON object per line" in one_line(p.stderr)


# ------------------------------------------------------------------------------------ a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 40 MB tmpfs mounted for the test and unmounted after it."""
    with small_tmpfs(tmp_path / "disk", 40) as mnt:
        yield mnt


def fill(disk: Path) -> Path:
    """Fill the disk to the last byte; returns the filler to delete."""
    filler = disk / "filler"
    with open(filler, "ab", buffering=0) as f:
        chunk = 1 << 20
        while chunk:
            try:
                f.write(b"\0" * chunk)
            except OSError:
                chunk //= 2
    return filler


def test_disk_full_in_checkpoint_metrics_and_result_keeps_what_was_there(small_disk, tmp_path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    try:
        acc = Accelerator(cpu=True)
        model = torch.nn.Linear(512, 512)
        opt = acc.prepare(torch.optim.Adam(model.parameters()))
        model = acc.prepare(model)
        model(torch.ones(2, 512)).sum().backward()
        opt.step()
        sched = SimpleNamespace(state_dict=dict, load_state_dict=lambda s: None)
        parts = SimpleNamespace(accelerator=acc, model=model, optimizer=opt, schedule=sched, ema=None)
        ckpt_dir = small_disk / "run" / "checkpoints"
        ckpt.save(parts, ckpt_dir, ckpt.TrainState(global_step=1))
        before = {p.name: p.read_bytes() for p in (ckpt_dir / "last").iterdir()}
        logger = RunLogger(small_disk / "run", is_main=True)
        logger.log_epoch({"epoch": 1, "train_loss": 1.0})
        metrics_before = logger.files.metrics.read_bytes()
        filler = fill(small_disk)

        with pytest.raises(ckpt.CheckpointError, match="disk full .*previous checkpoint in .* is intact"):
            ckpt.save(parts, ckpt_dir, ckpt.TrainState(global_step=2))
        assert {p.name: p.read_bytes() for p in (ckpt_dir / "last").iterdir()} == before
        assert not (ckpt_dir / ".last.tmp").exists()
        with pytest.raises(RunDirError, match="metrics.jsonl: disk full"):
            append_line(logger.files.metrics, json.dumps({"epoch": 2, "pad": "x" * 10000}))
        assert logger.files.metrics.read_bytes() == metrics_before
        with pytest.raises(RunDirError, match="result.json: disk full"):
            logger.finish({"status": "finished", "pad": "x" * 10000})
        assert not (small_disk / "run" / "result.json").exists()
        filler.unlink()
        logger.close(EXIT_OK)
        assert ckpt.read(ckpt_dir / "last", SimpleNamespace(accelerator=acc, optimizer=opt, schedule=sched,
                                                            ema=None)).state.global_step == 1
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


@pytest.mark.timeout(900)  # 62 s on a loaded 2-core machine
@pytest.mark.slow
def test_disk_full_during_a_run_exits_2_with_one_line_and_resumes(tiny_data, small_disk):
    cmd = train_cmd(tiny_data, small_disk, "full", "--run.epochs=40", "--run.global_batch_size=20",
                    "--run.checkpoint_every_steps=1", "--run.ema=true")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    meta = small_disk / "full" / "checkpoints" / "last" / "checkpoint.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not meta.is_file():
        time.sleep(0.05)
    filler = fill(small_disk)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-3000:]
    line = one_line(err)
    assert line.startswith("error: ") and "disk full (No space left on device)" in line, line
    assert not (small_disk / "full" / "result.json").exists()
    rows = [json.loads(x) for x in (small_disk / "full" / "metrics.jsonl").read_text().splitlines()] \
        if (small_disk / "full" / "metrics.jsonl").exists() else []
    filler.unlink()
    done = run(train_cmd(tiny_data, small_disk, "full", "--run.epochs=1", "--run.global_batch_size=20",
                         "--run.checkpoint_every_steps=1", "--run.ema=true", "--resume=auto"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r["epoch"] for r in metrics(small_disk / "full")][: len(rows)] == [r["epoch"] for r in rows]


# ------------------------------------------------------------------------------------ another world size


@pytest.mark.slow
def test_checkpoint_of_two_processes_resumes_on_one_and_back(tiny_data, tmp_path):
    """2 gloo processes -> 1 process -> 2 processes: the weights load (no `module.` prefix), the RNGs are
    re-seeded with one line each time, and every session finishes."""
    launch = [*launch_cpu_two(), "-m", "cifar_dist.train"]
    args = train_cmd(tiny_data, tmp_path, "ws")[3:] + ["--run.global_batch_size=100"]
    two = run(launch + args + ["--run.epochs=1"], timeout=600)
    assert two.returncode == 0, two.stdout[-1500:] + two.stderr[-3000:]
    assert read_json(tmp_path / "ws" / "env.json")["world_size"] == 2
    one = run([sys.executable, "-m", "cifar_dist.train", *args, "--run.epochs=2", "--resume=auto"])
    assert one.returncode == 0, one.stderr[-3000:]
    said = [ln for ln in one.stdout.splitlines() if "re-seeded" in ln]
    assert len(said) == 1 and "written by 2 processes, this run has 1" in said[0], one.stdout
    back = run(launch + args + ["--run.epochs=3", "--resume=auto"], timeout=600)
    assert back.returncode == 0, back.stdout[-1500:] + back.stderr[-3000:]
    said = [ln for ln in back.stdout.splitlines() if "re-seeded" in ln]
    assert len(said) == 1 and "written by 1 processes, this run has 2" in said[0], back.stdout
    assert [r["epoch"] for r in metrics(tmp_path / "ws")] == [1, 2, 3]
    assert read_json(tmp_path / "ws" / "result.json")["world_size"] == 2


def test_hparams_show_the_sweeps_varied_keys_and_a_fixed_set_with_text_for_booleans(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from cifar_dist.config import Config, flatten, to_dict
    from cifar_dist.engine.logs import HPARAMS_FIXED

    flat = flatten(to_dict(Config()))
    sweep = {"cells": [{"cell": "c000", "overrides": {"optim.lookahead": True, "aug.cutout": 8}},
                       {"cell": "c001", "overrides": {"optim.lookahead": False, "aug.cutout": 8}}],
             "seeds": [0, 1], "runs": [{"run": "c000-s0", "cell": "c000", "seed": 0}]}
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    shown = {}
    for name in ("c000-s0", "plain"):  # listed in sweep.json / not listed: the fixed set only
        logger = RunLogger(tmp_path / name, is_main=True)
        logger.hparams({**flat, "optim.lookahead": True, "aug.cutout": 8}, {"epoch/test_acc": "final test acc (%)"})
        logger.close(EXIT_OK)
        acc = EventAccumulator(str(tmp_path / name), size_guidance={"tensors": 0})
        acc.Reload()
        content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        shown[name] = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    hp = shown["c000-s0"]
    assert set(hp) == {"optim.lookahead", "aug.cutout", "run.seed", *HPARAMS_FIXED}
    assert hp["optim.lookahead"].string_value == "true" and hp["aug.cutout"].string_value == "8"  # integers as text
    assert hp["model.name"].string_value == "simple_cnn" and hp["run.epochs"].string_value == "10"
    assert set(shown["plain"]) == set(HPARAMS_FIXED)
