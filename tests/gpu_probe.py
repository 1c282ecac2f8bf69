"""Run by test_gpu_paths.py under `accelerate launch --config_file launch/cpu.yaml` (two gloo processes).

    gpu_probe.py syncbn on|off OUT.json
        One SGD step of a net with a BatchNorm2d and a timm BatchNormAct2d, each rank on its own, differently
        distributed 8 images. Records whether the BatchNorm running statistics agree across ranks and how far the
        statistics and updated weights are from one process stepping on all 16 images with plain BatchNorm.
    gpu_probe.py train shared|local BASE RESULT_PREFIX -- TRAIN FLAGS...
        Each rank works in BASE (shared) or BASE/rank<r> (local, a node-local run directory: --run.out_dir is
        relative), runs the trainer's command line and writes its exit status to RESULT_PREFIX<rank>.
"""

import copy
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def syncbn(setting: str, out: str) -> None:
    from accelerate import Accelerator
    from timm.layers import BatchNormAct2d

    from cifar_dist.engine.devices import GlooSyncBatchNorm, convert_sync_bn

    acc = Accelerator(cpu=True)
    world, rank = acc.num_processes, acc.process_index
    assert world == 2 and dist.is_initialized() and dist.get_world_size() == 2, (world, dist.is_initialized())
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 4, 3, padding=1), BatchNormAct2d(4, act_layer=torch.nn.ReLU),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 10),
    )
    reference = copy.deepcopy(model)  # plain BatchNorm, one process, all 16 images
    if setting == "on":
        model = convert_sync_bn(model, acc.device)
        syncs = [m for m in model.modules() if isinstance(m, GlooSyncBatchNorm)]
        assert len(syncs) == 2 and isinstance(syncs[1], BatchNormAct2d) and isinstance(syncs[1].act, torch.nn.ReLU)
        assert list(model.state_dict()) == list(reference.state_dict())  # same keys: checkpoints load either way
    lr = 0.1
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model, opt = acc.prepare(model, opt)
    g = torch.Generator().manual_seed(123)
    xs = [torch.randn(8, 3, 6, 6, generator=g) * (1 + 2 * r) + 3 * r for r in range(world)]  # ranks differ
    ys = [torch.randint(0, 10, (8,), generator=g) for _ in range(world)]
    model.train()
    loss = torch.nn.functional.cross_entropy(model(xs[rank]), ys[rank])
    acc.backward(loss)
    opt.step()
    plain = acc.unwrap_model(model, keep_torch_compile=False)
    stats = {k: v.detach().clone() for k, v in plain.state_dict().items() if "running" in k}
    gathered = [None, None]
    dist.all_gather_object(gathered, stats)

    ref_opt = torch.optim.SGD(reference.parameters(), lr=lr)
    reference.train()
    torch.nn.functional.cross_entropy(reference(torch.cat(xs)), torch.cat(ys)).backward()
    ref_opt.step()
    ref = reference.state_dict()
    stat_diff = max(float((stats[k] - ref[k]).abs().max()) for k in stats)
    weight_diff = max(float((v - ref[k]).abs().max()) for k, v in plain.state_dict().items()
                      if "running" not in k and "num_batches" not in k)
    equal = all(torch.equal(gathered[0][k], gathered[1][k]) for k in stats)
    if acc.is_main_process:
        Path(out).write_text(json.dumps({"world": world, "stats_equal": equal, "stat_diff": stat_diff,
                                         "weight_diff": weight_diff}))
    acc.wait_for_everyone()


def train(mode: str, base: str, prefix: str, flags: list[str]) -> None:
    rank = int(os.environ["RANK"])
    where = Path(base) if mode == "shared" else Path(base) / f"rank{rank}"
    where.mkdir(parents=True, exist_ok=True)
    os.chdir(where)
    from cifar_dist.cli.train import main

    status = main(flags)
    Path(f"{prefix}{rank}").write_text(str(status))
    sys.exit(status)


if __name__ == "__main__":
    if sys.argv[1] == "syncbn":
        syncbn(sys.argv[2], sys.argv[3])
    else:
        sep = sys.argv.index("--")
        train(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[sep + 1 :])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from cifar_dist.train import leave

        leave(0)  # as the trainer ends a rank of several: DDP's gloo threads outlive the process group
