"""What the hardware decides: precision where no GPU is usable, the process group's timeout, cuDNN autotuning,
SyncBatchNorm (also on CPUs), the module evaluation runs, and the check that every process sees the same run
directory.
"""

from __future__ import annotations

import functools
import glob
import os
import secrets
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from cifar_dist.config import ConfigError
from cifar_dist.files import atomic_write_text
from cifar_dist.run_dir import is_rank0

# Below this many images per device, BatchNorm statistics of one device are noisy enough to cost accuracy
# (Wu & He, "Group Normalization", fig. 1: the error of BN grows below 32 images per batch and steeply below
# 16); `--model.sync_bn` left unset syncs them across processes there.
SYNC_BN_BELOW = 32

GPU_PRECISIONS = ("bf16", "fp16", "fp8")
# torch's BatchNorm classes (timm's BatchNormAct2d is a BatchNorm2d) and the input ranks each accepts
BATCH_NORMS = {torch.nn.BatchNorm1d: (2, 3), torch.nn.BatchNorm2d: (4,), torch.nn.BatchNorm3d: (5,)}
SHARED_TOKEN = ".shared-dir-check"


def gpu_signs() -> list[str]:
    """What says this machine (or job) has GPUs: NVIDIA device nodes, CUDA_VISIBLE_DEVICES, SLURM's GPU variables."""
    signs = sorted(glob.glob("/dev/nvidia[0-9]*"))[:1]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible not in (None, "", "-1", "NoDevFiles"):
        signs.append(f"CUDA_VISIBLE_DEVICES={visible}")
    for key in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE", "SLURM_GPUS", "SLURM_GPUS_PER_NODE"):
        value = os.environ.get(key, "")
        if value not in ("", "0"):
            signs.append(f"{key}={value}")
    return signs


def choose_precision(requested: str, allow_cpu: bool) -> str | None:
    """The `mixed_precision` to build the Accelerator with (None: the launcher's, as accelerate reads it).

    requested: `--run.mixed_precision` ("auto" = ACCELERATE_MIXED_PRECISION from `accelerate launch`).
    Raises ConfigError (exit 2) when the machine shows GPUs that CUDA cannot use and `allow_cpu` is off.
    """
    explicit = None if requested == "auto" else requested
    if torch.cuda.is_available():
        return explicit
    signs = gpu_signs()
    if signs and not allow_cpu:
        raise ConfigError(
            f"no usable GPU: torch.cuda.is_available() is False although this machine shows GPUs "
            f"({', '.join(signs)}); check the NVIDIA driver against torch {torch.__version__} "
            f"(CUDA {torch.version.cuda}), or pass --run.allow_cpu=true to train on the CPU"
        )
    asked = os.environ.get("ACCELERATE_MIXED_PRECISION", "no") if explicit is None else explicit
    if asked in GPU_PRECISIONS:
        if is_rank0():
            source = "--run.mixed_precision" if explicit else "the launch file (ACCELERATE_MIXED_PRECISION)"
            print(f"warning: no usable GPU: mixed precision {asked} from {source} falls back to fp32 on the CPU "
                  f"(bf16/fp16 autocast is ~10x slower there)", file=sys.stderr, flush=True)
        return "no"
    return explicit


def init_kwargs(run) -> list:
    """accelerate handlers for the process group: `--run.dist_timeout_s` as its timeout (a rank that stops
    answering then fails the job after that long instead of torch's 10 (NCCL) or 30 (gloo) minutes)."""
    if not run.dist_timeout_s:
        return []
    from datetime import timedelta

    from accelerate.utils import InitProcessGroupKwargs

    return [InitProcessGroupKwargs(timeout=timedelta(seconds=run.dist_timeout_s))]


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """cuDNN autotuning on CUDA (fixed CIFAR shapes: each conv's fastest kernel is picked once), unless the run
    asked for deterministic algorithms (autotuning may pick a different kernel per run)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic


def synchronize(device: torch.device) -> None:
    """Wait until `device` has run everything queued on it (a no-op on the CPU). For timings that must include the
    device's work; called once per epoch and once at the first step, never per step."""
    if device.type not in ("cpu", "meta"):
        torch.accelerator.synchronize(device)


def launch_time() -> float:
    """When this run was launched, in epoch seconds: the start of the `accelerate launch` / torchrun process that
    started this one (walking up through launchers), else of this process."""
    import psutil

    proc = psutil.Process()
    start = proc.create_time()
    try:
        for parent in proc.parents():
            cmd = " ".join(parent.cmdline())
            if not any(k in cmd for k in ("accelerate", "torchrun", "torch.distributed.run")):
                break
            start = parent.create_time()
    except psutil.Error:  # a parent we may not inspect: the launch is as far up as we could see
        pass
    return start


def use_sync_bn(setting: bool | None, world: int, per_device: int) -> bool:
    """`--model.sync_bn`: true/false as set; unset (None) = on when more than one process trains on fewer than
    `SYNC_BN_BELOW` images per device. Never with one process (there is nothing to sync)."""
    if world <= 1:
        return False
    return per_device < SYNC_BN_BELOW if setting is None else bool(setting)


class AllReduceSum(torch.autograd.Function):
    """Differentiable sum over the process group: forward all-reduces x, backward all-reduces the gradient
    (d sum_r x_r / d x_r = 1 on every rank). Ours because torch.distributed.nn.functional.all_reduce, which does
    the same, warns (FutureWarning, deprecated) on every call."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        out = x.clone()  # all_reduce works in place
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class GlooSyncBatchNorm:
    """Mixed into a BatchNorm's own class on the CPU, where torch's SyncBatchNorm cannot run (its kernels are
    CUDA-only and DDP refuses any SyncBatchNorm on a CPU module): in training, the batch statistics come from sums
    all-reduced over the process group (differentiable `torch.distributed.nn` all-reduce, so the backward
    all-reduces too), with torch's running-stat update (unbiased variance; momentum or cumulative average).
    timm's BatchNormAct2d keeps its `drop` and `act`, applied after, as it does. Eval mode: the layer's own forward.
    """

    process_group = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        x = self._gloo_forward(x)
        for name in ("drop", "act"):
            if hasattr(self, name):
                x = getattr(self, name)(x)
        return x

    def _gloo_forward(self, x: torch.Tensor) -> torch.Tensor:
        ranks = next(r for cls, r in BATCH_NORMS.items() if isinstance(self, cls))
        if x.dim() not in ranks:  # the check torch's own forward makes, in its words
            raise ValueError(f"expected {' or '.join(f'{r}D' for r in ranks)} input (got {x.dim()}D input)")
        group = self.process_group or dist.group.WORLD
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        sums = AllReduceSum.apply(torch.cat([x.sum(dims), x.new_full((1,), x.numel() / x.shape[1])]), group)
        n, mean = sums[-1], sums[:-1] / sums[-1]
        centred = x - mean.view(shape)
        var = AllReduceSum.apply(centred.pow(2).sum(dims), group) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
                self.running_var.mul_(1 - f).add_(var.detach() * n / (n - 1).clamp_min(1), alpha=f)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


@functools.cache  # one class per BatchNorm class
def _gloo_class(cls: type) -> type:
    return type(f"GlooSync{cls.__name__}", (GlooSyncBatchNorm, cls), {})


def convert_sync_bn(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Every BatchNorm of `model` synchronised across processes; call before `accelerator.prepare`.

    On GPUs: timm's converter (torch's SyncBatchNorm; timm's BatchNormAct2d becomes SyncBatchNormAct and keeps
    act and drop, which torch's own converter would lose), with the same parameter and buffer objects. On the
    CPU: each BatchNorm gets `GlooSyncBatchNorm` mixed into its class (state and state_dict keys unchanged).
    """
    from timm.layers import convert_sync_batchnorm

    if device.type != "cpu":
        return convert_sync_batchnorm(model)
    for m in model.modules():
        if isinstance(m, tuple(BATCH_NORMS)) and not isinstance(m, GlooSyncBatchNorm):
            m.__class__ = _gloo_class(type(m))
    return model


def eval_model(accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and torch.compile, for evaluation, EMA updates and best-weight files.

    `keep_torch_compile=False` matters twice: evaluation must not run (and recompile) the compiled training
    graph for eval mode, other batch sizes and every TTA view; and accelerate's default (`True`) rewires the
    compiled wrapper's `_orig_mod` from the DDP module to the plain one, so `no_sync` and `.train()` would
    silently stop reaching DDP. A model compiled before DDP wrapped it is unwrapped too, so its state dict
    keys have no prefixes (no DDP `module.`, no compile `_orig_mod.`): checkpoints read it the same way.
    """
    from accelerate.utils import extract_model_from_parallel, is_compiled_module

    m = accelerator.unwrap_model(model, keep_torch_compile=False)
    # the EMA update calls this every step: the second (slower) unwrap runs only where a compile is left
    return extract_model_from_parallel(m, keep_torch_compile=False) if is_compiled_module(m) else m


def check_shared_run_dir(accelerator, run_dir: Path, timeout_s: float = 10.0) -> None:
    """With several processes: rank 0 writes a random token into `run_dir`, every rank reads it back.

    A rank that cannot read it within `timeout_s` (a node-local `runs/`) makes every rank raise the same
    ConfigError (exit 2), instead of rank 0 later evaluating a best checkpoint the others cannot see and the
    job hanging in mismatched collectives until NCCL's timeout.
    """
    if accelerator.num_processes <= 1:
        return
    from accelerate.utils import broadcast_object_list

    path = Path(run_dir) / SHARED_TOKEN
    token = [None]
    if accelerator.is_main_process:
        token = [secrets.token_hex(16)]
        atomic_write_text(path, token[0])  # makes the folder if need be
    broadcast_object_list(token)  # also the barrier: the file is written before anyone reads it
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ok = path.read_text() == token[0]
        except OSError:
            ok = False
        if ok or time.monotonic() >= deadline:  # NFS may show a new file on another node a moment later
            break
        time.sleep(0.2)
    missing = accelerator.reduce(torch.tensor([0.0 if ok else 1.0], device=accelerator.device), reduction="sum")
    if accelerator.is_main_process:
        path.unlink(missing_ok=True)
    if float(missing[0]):
        raise ConfigError(
            f"--run.out_dir: {int(missing[0])} of {accelerator.num_processes} processes cannot read {path}, written "
            f"by rank 0: every node must see the same run directory (a shared file system), not a node-local one"
        )
