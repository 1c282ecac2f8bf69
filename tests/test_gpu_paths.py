"""GPU code paths proven on the CPU: where every FFCV batch lands, compile order, device-side evaluation,
the CPU fallback of GPU precision, SyncBatchNorm and the shared run directory under real gloo DDP."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cifar_dist.config import AugConfig
from cifar_dist.data import FFCVLoader, Order, Split, beton_paths, ffcv_pipelines


def declared(ops, state):
    """Walk FFCV's declarations (no allocation, no device needed): [(op, state before, allocation)]."""
    steps = []
    for op in ops:
        after, alloc = op.declare_state_and_memory(state)
        steps.append((type(op).__name__, state, alloc))
        state = after
    return state, steps


def test_ffcv_pipelines_end_on_the_requested_device_without_a_host_buffer_after_it():
    """Declared for cuda:0 on a machine without one: the last op is ToDevice, and no op reading a device
    batch asks for a buffer elsewhere (the old order's ToTorchImage asked for a host buffer and copied back).
    Training and evaluation share the pipeline: training augmentation runs after it, on the device."""
    from ffcv.pipeline.state import State

    cuda = torch.device("cuda", 0)
    image_ops, label_ops = ffcv_pipelines(cuda)
    decoded = State(jit_mode=True, device=torch.device("cpu"), shape=(32, 32, 3), dtype=np.dtype("u1"))
    start = State(jit_mode=True, device=torch.device("cpu"), shape=None, dtype=np.dtype("u1"))
    for ops, state in ((image_ops[1:], decoded), (label_ops, start)):  # image_ops[0], the decoder, needs a file
        final, steps = declared(ops, state)
        for name, before, alloc in steps:
            if before.device.type == "cuda" and alloc is not None:
                assert alloc.device == cuda, f"{name} allocates on {alloc.device} after the batch reached {cuda}"
        assert final.device == cuda and steps[-1][0] == "ToDevice"
    final, _ = declared(image_ops[1:], decoded)
    assert final.shape == (3, 32, 32) and final.dtype == torch.uint8


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.slow
def test_ffcv_batches_are_on_the_requested_device(tiny_data, train):
    data_dir, name = tiny_data
    train_path, _ = beton_paths(data_dir, name)
    device = torch.device("cpu")
    loader = FFCVLoader(Split(train_path), batch_size=64, device=device, order=Order(train=train, seed=1),
                        aug=AugConfig(crop_padding=4, flip=True, cutout=8), num_workers=1)
    n = 0
    for x, y in loader:
        assert x.device == device and y.device == device
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32) and x.is_contiguous()
        assert y.dtype == torch.int64 and y.shape == (x.shape[0],)
        n += 1
    assert n == len(loader) > 0


# Ops that make the host wait for the device (or copy host data to it): .item()/float() of a device tensor,
# torch.tensor(host data, device=...), and ops whose output size depends on the data.
HOST_SYNC_OPS = {"_local_scalar_dense", "lift_fresh", "lift_fresh_copy", "bincount", "nonzero", "masked_select",
                 "_unique2", "unique_consecutive"}


def host_syncs(fn) -> list[str]:
    """The host-syncing aten ops `fn()` dispatches (recorded on the CPU; the same ops sync on a GPU)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: list[str] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in HOST_SYNC_OPS:
                seen.append(name)
            return func(*args, **(kwargs or {}))

    with Record():
        fn()
    return seen


@pytest.mark.parametrize("over", [{}, {"run.ema": True, "loss.mixup_prob": 0.5, "loss.mixup_alpha": 1.0,
                                       "loss.ricap_prob": 0.3, "optim.grad_clip": 1.0}], ids=["fast", "ema_mixers"])
@pytest.mark.slow
def test_training_steps_have_no_host_sync(tiny_data, over):
    """`fast` (tensor loader, reflect crops, alternating flips, lookahead-EMA) built by the engine: the aten ops of
    whole epochs of training steps include nothing that makes the host wait for the device (no .item(), no
    tensor from host data, no data-dependent output size). The loss and the sums stay on the device."""
    from cifar_dist.dataset import open_dataset
    from cifar_dist.engine import TrainState, train_one_epoch
    from cifar_dist.engine.session import build_loaders, build_parts, init_from_data, make_accelerator
    from cifar_dist.models import build_model
    from cifar_dist.presets import resolve

    data_dir, name = tiny_data
    cfg = resolve("fast", None, {"data.dir": str(data_dir), "data.name": name, "run.global_batch_size": 50,
                                 "model.widths": [8, 16, 16], "optim.ema_lookahead": 2, **over})
    acc, per_device = make_accelerator(cfg)
    model = build_model(cfg.model, 10)
    data = open_dataset(cfg.data)
    loaders = build_loaders(cfg, data, acc, per_device)
    init_from_data(model, data, n=100)
    parts, _ = build_parts(cfg, acc, model, len(loaders.train), 0.5, 10, per_device)
    sums, state = torch.zeros(3, dtype=torch.float64), TrainState()

    def epochs():
        for epoch in range(2):
            loaders.train.set_epoch(epoch)
            state.step_in_epoch = 0
            train_one_epoch(parts, loaders.train, state, sums, lambda step, loss: None)

    assert host_syncs(epochs) == []
    assert state.global_step == 2 * len(loaders.train) == 16 and float(sums[2]) == 2 * 400 // 50 * 50


@pytest.mark.slow
def test_launch_time_is_the_launchers_start_under_accelerate_launch(tmp_path):
    """first_step_s counts from the `accelerate launch` process's start (its interpreter start-up included);
    a process started directly counts from its own start."""
    import os
    import subprocess
    import sys

    from tests.helpers import REPO

    probe = tmp_path / "probe.py"
    probe.write_text("import psutil\nfrom cifar_dist.engine.devices import launch_time\n"
                     "me, parent = psutil.Process(), psutil.Process().parent()\n"
                     "print(launch_time() - me.create_time(), launch_time() - parent.create_time())\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    direct = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, env=env, timeout=120)
    assert [float(v) for v in direct.stdout.split()][0] == 0.0, direct.stderr
    launched = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                               str(REPO / "launch" / "1gpu.yaml"), str(probe)], capture_output=True, text=True,
                              env=env, timeout=300, cwd=tmp_path)
    own, launcher = (float(v) for v in launched.stdout.split())
    assert own < 0 and launcher == 0.0, launched.stdout + launched.stderr[-2000:]


def test_affine_augmentation_has_no_host_sync():
    from cifar_dist.augment import random_affine

    x = torch.rand(8, 3, 32, 32) * 255
    assert host_syncs(lambda: random_affine(x, 0.5, 0.1, 0.1, 15.0)) == []


@pytest.mark.parametrize("tta", ["none", "flip_translate"])
def test_evaluation_syncs_once_per_split_not_per_batch(tta):
    """The host syncs of `evaluate` do not grow with the number of batches (they happen after the loop)."""
    from accelerate import Accelerator

    from cifar_dist.data import Normalize
    from cifar_dist.engine.evaluate import evaluate

    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 10))
    norm = Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    batches = [(torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (6,)))
               for _ in range(4)]
    counts = {n: host_syncs(lambda n=n: evaluate(model, batches[:n], norm, acc, 10, tta)) for n in (1, 4)}
    assert counts[1] == counts[4] and "bincount" not in counts[4] and "lift_fresh" not in counts[4], counts
    result = evaluate(model, batches, norm, acc, 10, tta)
    assert sum(map(sum, result["confusion"])) == 24


GPU_ENV = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE", "SLURM_GPUS",
           "SLURM_GPUS_PER_NODE", "ACCELERATE_MIXED_PRECISION", "RANK")


@pytest.fixture
def no_gpu_env(monkeypatch):
    """This machine as it is (no CUDA), with every GPU hint of the environment removed."""
    from cifar_dist.engine import devices

    for key in GPU_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(devices.glob, "glob", lambda pattern: [])
    assert not torch.cuda.is_available()
    return devices


@pytest.mark.parametrize("requested, env, expected", [
    ("auto", "bf16", "no"), ("bf16", None, "no"), ("fp16", "no", "no"), ("auto", "no", None), ("auto", None, None),
    ("no", "bf16", "no"),
])
def test_gpu_precision_without_a_gpu_falls_back_to_fp32_with_one_warning(no_gpu_env, monkeypatch, capsys, requested,
                                                                         env, expected):
    if env is not None:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", env)
    assert no_gpu_env.choose_precision(requested, allow_cpu=False) == expected
    err = capsys.readouterr().err
    asked = requested if requested != "auto" else env
    if asked in ("bf16", "fp16"):
        assert err.count("\n") == 1 and err.startswith(f"warning: no usable GPU: mixed precision {asked}"), err
    else:
        assert err == ""


def test_warning_is_printed_by_rank_0_only(no_gpu_env, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    assert no_gpu_env.choose_precision("bf16", allow_cpu=False) == "no"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("key, value", [("CUDA_VISIBLE_DEVICES", "0"), ("SLURM_JOB_GPUS", "2"),
                                        ("SLURM_GPUS_ON_NODE", "1"), ("/dev/nvidia0", "")])
def test_gpus_expected_but_cuda_unusable_stops_unless_allowed(no_gpu_env, monkeypatch, capsys, key, value):
    from cifar_dist.errors import InputError

    if key.startswith("/dev"):
        monkeypatch.setattr(no_gpu_env.glob, "glob", lambda pattern: [key])
    else:
        monkeypatch.setenv(key, value)
    with pytest.raises(InputError) as e:
        no_gpu_env.choose_precision("auto", allow_cpu=False)
    msg = str(e.value)
    assert "\n" not in msg and "torch.cuda.is_available() is False" in msg and "--run.allow_cpu=true" in msg
    assert (key in msg) and msg.startswith("no usable GPU")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert no_gpu_env.choose_precision("auto", allow_cpu=True) == "no"  # allowed: the CPU, in fp32


@pytest.mark.parametrize("value", ["", "-1", "NoDevFiles"])
def test_hidden_gpus_are_no_sign_of_a_gpu(no_gpu_env, monkeypatch, value):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "0")
    assert no_gpu_env.gpu_signs() == []


def test_sync_bn_default_follows_world_and_per_device_batch():
    from cifar_dist.engine.devices import SYNC_BN_BELOW, use_sync_bn

    assert SYNC_BN_BELOW == 32
    assert use_sync_bn(None, 8, 16) and use_sync_bn(None, 2, 31)
    assert not use_sync_bn(None, 8, 32) and not use_sync_bn(None, 1, 4)
    assert use_sync_bn(True, 2, 512) and not use_sync_bn(False, 8, 4) and not use_sync_bn(True, 1, 4)


def test_cudnn_benchmark_on_cuda_unless_deterministic(monkeypatch):
    from cifar_dist.engine.devices import configure_backends

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    configure_backends(torch.device("cpu"), deterministic=False)
    assert torch.backends.cudnn.benchmark is False
    configure_backends(torch.device("cuda", 0), deterministic=False)
    assert torch.backends.cudnn.benchmark is True
    configure_backends(torch.device("cuda", 0), deterministic=True)
    assert torch.backends.cudnn.benchmark is False


@pytest.mark.slow
def test_compile_wraps_the_prepared_model_and_evaluation_never_recompiles():
    """Inductor for real on a tiny net through the session's own build_parts: training compiles once; evaluation
    at other batch sizes with 10 TTA views, and training again afterwards, add no graph."""
    import shutil

    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("gcc")):
        pytest.skip("no C++ compiler: torch.compile's inductor backend cannot build kernels here")
    from accelerate import Accelerator
    from torch._dynamo.eval_frame import OptimizedModule
    from torch._dynamo.utils import counters

    from cifar_dist.config import AugConfig, Config, ModelConfig, OptimConfig, RunConfig, SchedConfig
    from cifar_dist.data import TensorLoader
    from cifar_dist.engine import TrainState, evaluate, train_one_epoch
    from cifar_dist.engine.devices import eval_model
    from cifar_dist.engine.session import build_parts

    torch._dynamo.reset()
    cfg = Config(aug=AugConfig(crop_padding=0, flip=False), model=ModelConfig(name="simple_cnn", compile=True),
                 optim=OptimConfig(lr=0.01), sched=SchedConfig(name="constant"), run=RunConfig(epochs=1))
    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 10))
    parts, norm = build_parts(cfg, acc, model, 3, 0.01, 10, per_device=cfg.run.global_batch_size)
    assert isinstance(parts.model, OptimizedModule) and parts.model._orig_mod is acc._models[-1]  # compile outside
    plain = eval_model(acc, parts.model)
    assert not isinstance(plain, OptimizedModule) and parts.model._orig_mod is acc._models[-1]  # nothing rewired
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    train = TensorLoader(x[:48], y[:48], batch_size=16, order=Order(train=True))
    graphs = lambda: counters["stats"]["unique_graphs"]  # noqa: E731
    train_one_epoch(parts, train, TrainState(), torch.zeros(3, dtype=torch.float64), lambda step, loss: None)
    compiled = graphs()
    assert compiled >= 1
    for bs in (10, 7):  # ragged last batches too
        evaluate(plain, TensorLoader(x, y, batch_size=bs), norm, acc, 10, "flip_translate")
    train.set_epoch(1)
    train_one_epoch(parts, train, TrainState(), torch.zeros(3, dtype=torch.float64), lambda step, loss: None)
    assert graphs() == compiled, f"recompiled: {compiled} graphs after training, {graphs()} after evaluation"


def launch_two(args: list[str], timeout: int = 400):
    """`accelerate launch --config_file launch/cpu.yaml tests/gpu_probe.py ARGS`: two gloo processes."""
    import os
    import subprocess

    from tests.helpers import REPO, launch_cpu_two

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [*launch_cpu_two(), str(REPO / "tests" / "gpu_probe.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


@pytest.mark.slow
def test_sync_bn_gives_both_ranks_the_statistics_of_the_global_batch(tmp_path):
    """Two gloo processes, 8 differently distributed images each, one step: with --model.sync_bn the BatchNorm
    running statistics agree on both ranks and equal one process's on all 16 images (weights too); without it
    they differ (so the comparison says something)."""
    from tests.helpers import read_json

    out = {}
    for setting in ("on", "off"):
        dst = tmp_path / f"{setting}.json"
        p = launch_two(["syncbn", setting, str(dst)])
        assert p.returncode == 0, p.stdout[-1500:] + p.stderr[-3000:]
        out[setting] = read_json(dst)
    on, off = out["on"], out["off"]
    assert on["world"] == 2 and on["stats_equal"] and on["stat_diff"] < 1e-5 and on["weight_diff"] < 1e-5, on
    assert not off["stats_equal"] and off["stat_diff"] > 1e-2, off


@pytest.mark.slow
def test_node_local_run_directory_stops_every_rank_with_one_line_and_a_shared_one_trains(tiny_data, tmp_path):
    """Each rank in its own working directory with a relative --run.out_dir (what a node-local runs/ looks like):
    both ranks exit 2 before training, with one error line per node. In one shared directory the same run (SyncBatchNorm
    on) finishes, the check leaves no token behind, and `done:` is printed once."""
    data_dir, name = tiny_data
    flags = ["--preset=smoke", f"--data.dir={data_dir}", f"--data.name={name}", "--run.out_dir=runs",
             "--run.name=shared", "--run.progress=false", "--model.sync_bn=true", "--data.limit_train=400",
             "--run.dist_timeout_s=300"]
    local = launch_two(["train", "local", str(tmp_path / "local"), str(tmp_path / "local_rc"), "--", *flags])
    assert [(tmp_path / f"local_rc{r}").read_text() for r in (0, 1)] == ["2", "2"], local.stderr[-3000:]
    errors = [line for line in local.stderr.splitlines() if line.startswith("error: ")]
    # both exit 2; the line is printed once per node (by LOCAL_RANK 0), and here both ranks share one host
    assert len(errors) == 1 and "--run.out_dir: 1 of 2 processes cannot read" in errors[0], errors
    assert not (tmp_path / "local" / "rank0" / "runs" / "shared" / "metrics.jsonl").exists()

    shared = launch_two(["train", "shared", str(tmp_path / "shared"), str(tmp_path / "shared_rc"), "--", *flags])
    assert [(tmp_path / f"shared_rc{r}").read_text() for r in (0, 1)] == ["0", "0"], shared.stderr[-3000:]
    run_dir = tmp_path / "shared" / "runs" / "shared"
    assert (run_dir / "result.json").is_file() and not (run_dir / ".shared-dir-check").exists()
    assert shared.stdout.count("done: ") == 1, shared.stdout[-2000:]


@pytest.mark.timeout(900)  # 75 s on a loaded 2-core machine
@pytest.mark.slow
def test_cli_stops_where_gpus_show_but_cuda_is_unusable_and_falls_back_where_none_show(tiny_data, tmp_path):
    """The trainer's command line: CUDA_VISIBLE_DEVICES=0 without a usable GPU stops with one line, exit 2, before
    any file is written; on this machine as it is, bf16 from the launcher's environment trains in fp32 after one
    warning line."""
    import os
    import subprocess
    import sys

    from tests.helpers import REPO

    data_dir, name = tiny_data
    cmd = [sys.executable, "-m", "cifar_dist.train", "--preset=smoke", f"--data.dir={data_dir}", f"--data.name={name}",
           f"--run.out_dir={tmp_path}", "--run.progress=false", "--data.limit_train=400", "--data.limit_test=200"]
    base = {k: v for k, v in os.environ.items() if k not in GPU_ENV}
    base["OMP_NUM_THREADS"] = "1"
    # the two cases run side by side (independent processes and folders)
    stopped, fallback = (subprocess.Popen(cmd + [f"--run.name={name}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True, cwd=REPO, env={**base, **extra})
                         for name, extra in (("gpu_expected", {"CUDA_VISIBLE_DEVICES": "0"}),
                                             ("fallback", {"ACCELERATE_MIXED_PRECISION": "bf16"})))
    out = {}
    for name, proc in (("gpu_expected", stopped), ("fallback", fallback)):
        stdout, stderr = proc.communicate(timeout=300)
        out[name] = SimpleNamespace(returncode=proc.returncode, stdout=stdout, stderr=stderr)
    p = out["gpu_expected"]
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr[-2000:]
    assert p.stderr.startswith("error: no usable GPU") and "--run.allow_cpu=true" in p.stderr
    assert not (tmp_path / "gpu_expected").exists()
    p = out["fallback"]
    assert p.returncode == 0, p.stderr[-2000:]
    warnings = [line for line in p.stderr.splitlines() if line.startswith("warning: no usable GPU")]
    assert len(warnings) == 1 and "bf16" in warnings[0], p.stderr[-2000:]
    assert "precision no" in p.stdout and p.stdout.count("done: ") == 1, p.stdout[-2000:]


@pytest.mark.slow
def test_gpu_check_says_no_gpu_and_exits_2(tmp_path):
    """bench/gpu_check.sh (and the Python it runs) on a machine without a usable GPU: one clear line, status 2."""
    import os
    import subprocess
    import sys

    from tests.helpers import REPO

    env = {**os.environ, "CIFAR_DIST_PYTHON": sys.executable}
    for cmd in (["bash", str(REPO / "bench" / "gpu_check.sh"), "--out", str(tmp_path)],
                [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--out", str(tmp_path)]):
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
        assert p.returncode == 2 and p.stdout == "", (p.returncode, p.stdout, p.stderr)
        assert p.stderr.startswith("gpu_check: no usable GPU") and p.stderr.count("\n") == 1, p.stderr
        assert "nothing was run" in p.stderr
    assert list(tmp_path.iterdir()) == []


def test_dist_timeout_reaches_the_process_group_settings():
    from datetime import timedelta

    from cifar_dist.config import RunConfig
    from cifar_dist.engine.devices import init_kwargs

    assert init_kwargs(RunConfig()) == []
    (handler,) = init_kwargs(RunConfig(dist_timeout_s=90))
    assert handler.timeout == timedelta(seconds=90)
