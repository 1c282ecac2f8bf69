"""Run by test_train.py once alone and once under `accelerate launch --config_file launch/cpu.yaml`.

Trains 20 steps with the engine's own `train_one_epoch` (global batch 20, no random augmentation,
a BatchNorm-free net so that per-process batches compute the same function) and records the global
per-step losses; under two processes it also records which test rows FFCV's distributed loader
gave each rank. Usage: ddp_probe.py DATA_DIR NAME OUT.json EXPECTED_WORLD_SIZE
"""

import hashlib
import json
import os
import sys

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import set_seed

from cifar_dist.augment import BatchMixer, TrainTransform
from cifar_dist.config import AugConfig, LossConfig, SchedConfig
from cifar_dist.data import FFCVLoader, Normalize, Order, Split, TensorLoader, beton_paths, read_images
from cifar_dist.engine import StepParts, TrainState, train_one_epoch
from cifar_dist.optim import Schedule
from cifar_dist.train import leave


def main() -> None:
    data_dir, name, out, expected = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    acc = Accelerator(cpu=True)
    world, rank = acc.num_processes, acc.process_index
    # Inside each process: a "2-process" run that silently fell back to single processes fails here.
    assert world == expected, f"expected world size {expected}, found {world}"
    if expected > 1:
        assert dist.is_initialized() and dist.get_world_size() == expected
    set_seed(0)
    train_path, test_path = beton_paths(data_dir, name)
    x, y = read_images(train_path)
    global_batch = 20
    loader = TensorLoader(x, y, batch_size=global_batch // world, device=acc.device, order=Order(train=True, seed=0, rank=rank, world_size=world))
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
        torch.nn.Linear(128, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model, opt = acc.prepare(model, opt)
    schedule = Schedule(opt, SchedConfig(name="constant"), 0.05, len(loader), 1)
    norm = Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    transform = TrainTransform(AugConfig(crop_padding=0, flip=False), norm)
    mixer = BatchMixer(LossConfig(), 10)
    losses: list[float] = []
    sums = torch.zeros(3, dtype=torch.float64)
    parts = StepParts(acc, model, opt, schedule, transform, mixer, torch.nn.CrossEntropyLoss(), ema=None, grad_clip=0.0)
    train_one_epoch(parts, loader, TrainState(), sums,
                    lambda step, loss: losses.append(float(acc.reduce(loss, reduction="mean"))))
    total = acc.reduce(sums, reduction="sum")
    assert int(total[2]) == 20 * global_batch

    shards = []
    if world > 1:
        xt, _ = read_images(test_path)
        index = {hashlib.sha1(img.tobytes()).hexdigest(): i for i, img in enumerate(xt)}
        ffcv = FFCVLoader(Split(test_path), batch_size=16, num_workers=1, order=Order(train=True, seed=3, rank=rank, world_size=world, drop_last=False))
        mine = []
        for imgs, _ in ffcv:
            for img in imgs.permute(0, 2, 3, 1).contiguous().numpy():
                mine.append(index[hashlib.sha1(img.tobytes()).hexdigest()])
        gathered = [None] * world
        dist.all_gather_object(gathered, mine)
        shards = gathered
    if acc.is_main_process:
        with open(out, "w") as f:
            json.dump({"losses": losses, "world_size": world, "distributed_type": str(acc.distributed_type).split(".")[-1],
                       "initialized": dist.is_initialized(), "ffcv_shards": shards}, f)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        leave(0)  # as the trainer ends a rank of several: DDP's gloo threads outlive the process group
