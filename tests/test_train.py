"""The training engine end to end: real .beton files, real subprocesses, real checkpoints and events."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, launch_cpu_two, read_json

TIMING = {"images_per_s", "epoch_s"}


def train_cmd(data, out: Path, name: str, *extra: str) -> list[str]:
    data_dir, data_name = data
    return [sys.executable, "-m", "cifar_dist.train", "--preset=smoke", f"--data.dir={data_dir}",
            f"--data.name={data_name}", "--data.val_size=100", f"--run.out_dir={out}", f"--run.name={name}",
            "--run.progress=false", *extra]


def run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "checkpoints" / "last" / "model.safetensors"))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


# Exercises every piece of state a resume must restore: weights, Adam moments, EMA, the numpy RNG
# behind timm's Mixup, the torch RNG, the onecycle lr (from the step alone), the position in the epoch and the epoch's
# running sums. Every step is logged, so the TensorBoard series must survive the resume point by point.
RESUME_ARGS = ["--run.epochs=3", "--run.global_batch_size=20", "--run.checkpoint_every_steps=1", "--run.ema=true",
               "--loss.mixup_prob=0.5", "--loss.mixup_alpha=0.4", "--model.dropout=0.1", "--sched.name=onecycle",
               "--run.log_every_steps=1"]
# The airbench recipe's options: whitening stem (its bias stops after epoch 1), Dirac init, decoupled
# Nesterov SGD with a norm-bias lr scale, the linear schedule, lookahead-EMA, reflect crops, alternating flip.
RECIPE_ARGS = ["--run.epochs=3", "--run.global_batch_size=20", "--run.checkpoint_every_steps=1",
               "--model.name=airbench", "--model.widths=[8,16,16]", "--model.whiten=1", "--model.bn_eps=1e-12",
               "--model.dirac_init=true", "--optim.name=sgd", "--optim.decoupled=true", "--optim.lr=2.0",
               "--optim.momentum=0.85", "--optim.nesterov=true", "--optim.weight_decay=0.01",
               "--optim.bias_lr_scale=8", "--optim.ema_lookahead=2", "--sched.name=linear", "--sched.warmup_frac=0.2",
               "--sched.warmup_start=0.2", "--sched.min_lr_ratio=0.07", "--aug.crop_padding=2", "--aug.crop_pad=reflect",
               "--aug.flip_mode=alternating", "--loss.label_smoothing=0.2", "--run.log_every_steps=1"]

# fast_muon's options: Muon (momentum, filter-norm projection) beside the companion SGD with a head lr scale.
MUON_ARGS = [a for a in RECIPE_ARGS if not a.startswith(("--optim.ema_lookahead", "--optim.name"))] + [
    "--optim.name=muon", "--optim.muon_lr=0.2", "--optim.muon_momentum=0.6", "--optim.muon_ns_steps=3",
    "--optim.muon_normalize=true", "--optim.head_lr_scale=0.25"]


@pytest.mark.parametrize("args", [RESUME_ARGS, RECIPE_ARGS, MUON_ARGS],
                         ids=["adam_mixup_ema_onecycle", "airbench_recipe", "muon_recipe"])
@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_exact(tiny_data, tmp_path, args):
    # the uninterrupted reference trains beside the run that is killed: one core each
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "ref.err", "w") as ref_err:
        ref = subprocess.Popen(train_cmd(tiny_data, tmp_path, "ref", *args), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=ref_err, env=one_thread)
    try:
        cmd = train_cmd(tiny_data, tmp_path, "cut", *args)
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=one_thread)
        state_file = tmp_path / "cut" / "checkpoints" / "last" / "train_state.json"
        killed_at = None
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            try:
                st = json.loads(state_file.read_text())
            except (OSError, ValueError):
                st = None
            if st and st["epoch"] == 1 and st["step_in_epoch"] >= 4:
                proc.send_signal(signal.SIGKILL)
                killed_at = st
                break
            time.sleep(0.02)
        proc.wait(timeout=60)
        assert killed_at is not None, "the run ended before it could be killed in epoch 2"
        assert not (tmp_path / "cut" / "result.json").exists()

        resumed = run(cmd + ["--resume=auto"])
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert "resumed at epoch 2" in resumed.stdout
        assert ref.wait(timeout=300) == 0, (tmp_path / "ref.err").read_text()[-2000:]
    finally:  # a failed assertion above must not leave the reference training
        if ref.poll() is None:
            ref.kill()
    a, b = weights(tmp_path / "ref"), weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"weights differ after resume: {k}"
    assert untimed(metrics(tmp_path / "ref")) == untimed(metrics(tmp_path / "cut"))
    ra, rb = read_json(tmp_path / "ref" / "result.json"), read_json(tmp_path / "cut" / "result.json")
    assert ra["final"] == rb["final"] and ra["best"] == rb["best"]
    assert [r["epoch"] for r in metrics(tmp_path / "cut")] == [1, 2, 3]
    ref_tb, cut_tb = step_scalars(tmp_path / "ref"), step_scalars(tmp_path / "cut")
    assert [s for s, _ in ref_tb["train/loss"]] == list(range(1, 3 * 15 + 1))
    assert cut_tb == ref_tb  # every point, logged once, with the same value (the kill point included)


def step_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of every scalar tag in the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]
            if not t.startswith("epoch/images_per_s") and t not in ("epoch/epoch_s", "epoch/wall_s")}


@pytest.mark.slow
def test_sigterm_saves_checkpoint_exits_3_and_resume_finishes(tiny_data, tmp_path):
    cmd = train_cmd(tiny_data, tmp_path, "term", "--run.epochs=4", "--run.global_batch_size=20")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics_file = tmp_path / "term" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics_file.is_file() and metrics_file.read_text().count("\n") >= 1:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err[-2000:]
    assert "checkpoint saved" in err
    st = read_json(tmp_path / "term" / "checkpoints" / "last" / "train_state.json")
    assert st["epoch"] >= 1
    done = run(cmd + ["--resume=auto"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r["epoch"] for r in metrics(tmp_path / "term")] == [1, 2, 3, 4]


@pytest.mark.slow
def test_nonfinite_loss_stops_with_status_4_and_keeps_checkpoint(tiny_data, tmp_path):
    # lr 1e30: step 1 is finite and checkpointed, its update blows the weights up, step 2's loss is not
    # finite. The run must stop before saving anything from step 2 on.
    p = run(train_cmd(tiny_data, tmp_path, "nan", "--run.epochs=2", "--optim.name=sgd", "--optim.lr=1e30",
                      "--run.checkpoint_every_steps=1"))
    assert p.returncode == 4, p.stderr[-2000:]
    assert "non-finite loss" in p.stderr and "last good checkpoint kept" in p.stderr
    assert read_json(tmp_path / "nan" / "result.json")["status"] == "diverged"  # issue 19: a sweep counts it
    st = read_json(tmp_path / "nan" / "checkpoints" / "last" / "train_state.json")
    assert (st["epoch"], st["step_in_epoch"], st["global_step"]) == (0, 1, 1)
    assert math.isfinite(st["loss_sum"]) and st["seen"] == 100
    for name, w in weights(tmp_path / "nan").items():
        assert torch.isfinite(w).all(), name


@pytest.mark.slow
def test_run_directory_explains_itself(tiny_data, tmp_path):
    cmd = train_cmd(tiny_data, tmp_path, "full", "--run.epochs=2", "--run.ema=true", "--run.tta=flip",
                    "--run.log_every_steps=1")
    p = run([a for a in cmd if a != "--run.progress=false"])  # the default progress, stderr a pipe
    assert p.returncode == 0, p.stderr[-2000:]
    assert "\r" not in p.stderr and "it/s" not in p.stderr, p.stderr[-500:]  # no bar in a log file
    d = tmp_path / "full"
    for f in ("config.yaml", "command.txt", "env.json", "metrics.jsonl", "result.json",
              "checkpoints/last/train_state.json", "checkpoints/best/model.pt"):
        assert (d / f).exists(), f
    env = read_json(d / "env.json")
    assert env["packages"]["torch"] and env["world_size"] == 1 and env["params"] == 600_746
    rows = metrics(d)
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert {"train_loss", "train_acc", "val_acc", "test_acc", "ema_val_acc", "ema_test_acc", "lr",
                "images_per_s", "epoch_s"} <= r.keys()
        assert 0 <= r["test_acc"] <= 100 and r["images_per_s"] > 0
    res = read_json(d / "result.json")
    assert res["status"] == "finished" and res["epochs"] == 2 and res["params"] == 600_746
    assert res["final"]["test_acc"] == pytest.approx(rows[-1]["test_acc"])
    assert res["best"]["epoch"] == max(rows, key=lambda r: r["val_acc"])["epoch"]
    assert "--run.epochs=2" in (d / "command.txt").read_text()

    # TensorBoard: read the events back with tensorboard's own reader.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(d), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    for t in ("train/loss", "train/lr", "epoch/test_acc", "epoch/val_acc", "epoch/val_loss", "epoch/train_loss"):
        assert t in tags["scalars"], t
    assert "model/params" not in tags["scalars"] and "model/params/text_summary" in tags["tensors"]
    test_acc = [e.value for e in acc.Scalars("epoch/test_acc")]
    assert test_acc == pytest.approx([r["test_acc"] for r in rows], abs=1e-4)
    assert [e.step for e in acc.Scalars("epoch/test_acc")] == [1, 2]
    steps_per_epoch = 300 // 100
    assert len(acc.Scalars("train/loss")) == 2 * steps_per_epoch
    assert "test/confusion_matrix" in tags["images"]
    # hparams summary (plugin data) with the final metric
    hp = EventAccumulator(str(d), size_guidance={"tensors": 0})
    hp.Reload()
    assert "_hparams_/session_start_info" in hp.summary_metadata or any(
        "hparams" in t for t in hp.Tags()["tensors"]), hp.Tags()
    # HParams shows each metric series' last point: the final test accuracy
    assert acc.Scalars("epoch/test_acc")[-1].value == pytest.approx(res["final"]["test_acc"], abs=1e-4)


@pytest.mark.parametrize("args, needle", [
    (["--optim.lrr=0.1"], "--optim.lrr: unknown key"),
    (["--run.epochs=three"], "--run.epochs: expected an integer, found 'three'"),
    (["--data.loader=dali"], "--data.loader: expected one of tensor, ffcv, found 'dali'"),
    (["--preset=seed999"], "--preset: unknown preset 'seed999'"),
    (["--data.dir=/nonexistent"], "/nonexistent/tiny_train.beton: file not found"),
    (["--model.max_params=1000"], "--model.max_params: simple_cnn has 600,746 parameters"),
    (["stray"], "unexpected argument 'stray'"),
])
@pytest.mark.slow
def test_bad_input_one_line_exit_2(tiny_data, tmp_path, args, needle):
    p = run(train_cmd(tiny_data, tmp_path, "bad") + args)
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], p.stderr
    assert not (tmp_path / "bad" / "result.json").exists()


def test_print_config_and_help():
    p = run([sys.executable, "-m", "cifar_dist.train", "--preset=seed002_tpsnet", "--optim.lr=0.05", "--print_config"])
    assert p.returncode == 0
    import yaml

    cfg = yaml.safe_load(p.stdout)
    assert cfg["optim"]["lr"] == 0.05 and cfg["model"]["blocks"] == [13, 13, 13] and cfg["preset"] == "seed002_tpsnet"
    h = run([sys.executable, "-m", "cifar_dist.train", "--help"])
    assert h.returncode == 0 and "--optim.lookahead_k=5" in h.stdout and "accelerate launch" in h.stdout


@pytest.mark.parametrize("world_size", ["1", "2"])
def test_a_rank_of_several_leaves_without_interpreter_teardown(world_size, tmp_path):
    """One rank of several (WORLD_SIZE > 1) ends with os._exit after flushing: no atexit handler (the
    interpreter's teardown, where DDP's still running gloo threads made a rank abort now and then) runs, and
    the output piped to the launcher is whole. A lone process exits normally."""
    marker = tmp_path / "teardown-ran"
    (tmp_path / "sitecustomize.py").write_text(
        f"import atexit, pathlib\natexit.register(pathlib.Path({str(marker)!r}).touch)\n")
    env = {**os.environ, "WORLD_SIZE": world_size, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    p = subprocess.run([sys.executable, "-m", "cifar_dist.train", "--help"], capture_output=True, text=True,
                       timeout=120, cwd=REPO, env=env)
    full = subprocess.run([sys.executable, "-m", "cifar_dist.train", "--help"], capture_output=True, text=True,
                          timeout=120, cwd=REPO).stdout
    assert p.returncode == 0 and p.stdout == full and len(full) > 2000, p.stderr
    assert marker.exists() == (world_size == "1")


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tiny_data, tmp_path):
    """Real gloo DDP (2 processes) against one process with the same global batch: per-step losses."""
    script = REPO / "tests" / "ddp_probe.py"
    data_dir, name = tiny_data
    out = {}
    for procs in (1, 2):
        dst = tmp_path / f"losses_{procs}.json"
        if procs == 1:
            cmd = [sys.executable, str(script)]
        else:
            cmd = [*launch_cpu_two(), str(script)]
        p = run(cmd + [str(data_dir), name, str(dst), str(procs)], timeout=400)
        assert p.returncode == 0, p.stdout[-1500:] + p.stderr[-3000:]
        out[procs] = read_json(dst)
    one, two = out[1], out[2]
    assert two["world_size"] == 2 and two["distributed_type"] == "MULTI_CPU" and two["initialized"]
    assert len(one["losses"]) == len(two["losses"]) == 20
    for a, b in zip(one["losses"], two["losses"]):
        assert abs(a - b) < 1e-4, (one["losses"], two["losses"])
    # the losses must actually move, or the comparison says nothing
    assert one["losses"][0] - one["losses"][-1] > 0.1
    # FFCV's distributed loader gave the two ranks disjoint shards that cover the split
    shards = two["ffcv_shards"]
    assert len(shards) == 2 and not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(200))


@pytest.mark.slow
def test_real_data_learns_in_one_epoch(real_cifar10, tmp_path):
    """The shared real CIFAR-10, seed 003's small CNN, one epoch on CPU: test accuracy >= 45 %."""
    data_dir, name, _ = real_cifar10
    p = run([sys.executable, "-m", "cifar_dist.train", "--preset=seed003_simple_cnn", f"--data.dir={data_dir}",
             f"--data.name={name}", "--run.epochs=1", "--optim.lr=0.001", "--data.val_size=5000",
             f"--run.out_dir={tmp_path}", "--run.name=real", "--run.progress=false"], timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    res = read_json(tmp_path / "real" / "result.json")
    print(f"\nreal data, seed003_simple_cnn, 1 epoch: test {res['final']['test_acc']:.2f} %, "
          f"{res['images_per_s']:.0f} images/s")
    assert res["final"]["test_acc"] >= 45.0
    rows = metrics(tmp_path / "real")
    assert rows[0]["val_acc"] >= 40.0


@pytest.mark.slow
def test_smoke_on_real_data_is_a_ten_class_problem(real_cifar10, tmp_path):
    """`--preset=smoke` on the shared real CIFAR-10: its 2,000 training and 1,000 test images are class-balanced
    draws, so one epoch lands well between chance (10 %) and the 100 % a one-class subset would give."""
    data_dir, name, _ = real_cifar10
    p = run([sys.executable, "-m", "cifar_dist.train", "--preset=smoke", f"--data.dir={data_dir}",
             f"--data.name={name}", f"--run.out_dir={tmp_path}", "--run.name=smoke", "--run.progress=false"],
            timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    res = read_json(tmp_path / "smoke" / "result.json")
    print(f"\nreal data, smoke: test {res['final']['test_acc']:.2f} %")
    assert 15.0 <= res["final"]["test_acc"] <= 90.0
