"""Throughput of a cifar_dist training step against a bare PyTorch loop (same model, batch and data).

    python bench/engine.py [--model simple_cnn] [--batch 256] [--steps 40] [--repeats 3]

Both sides train the same freshly initialised model on the same uint8 batches resident in memory:
the bare loop normalises, runs forward/backward and steps SGD; cifar_dist runs `train_one_epoch`
(Accelerator, TrainTransform, BatchMixer, Schedule, global loss/accuracy reduction, on_step hook).
The two alternate `--repeats` times; the best of each is kept. Prints images/s and the ratio
cifar_dist / bare (target >= 0.95).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="simple_cnn")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from accelerate import Accelerator

    from cifar_dist.augment import BatchMixer, TrainTransform
    from cifar_dist.checkpoint import TrainState
    from cifar_dist.config import AugConfig, LossConfig, SchedConfig
    from cifar_dist.data import Normalize, TensorLoader, compute_threads
    from cifar_dist.models import create_model
    from cifar_dist.optim import Schedule
    from cifar_dist.train import train_one_epoch

    torch.set_num_threads(compute_threads())
    n = args.batch * args.steps
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    acc = Accelerator(cpu=not torch.cuda.is_available())
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)

    def fresh():
        torch.manual_seed(0)
        m = create_model(args.model).to(acc.device)
        return m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)

    def bare() -> float:
        model, opt = fresh()
        norm = Normalize(mean, std).to(acc.device)
        loader = TensorLoader(images, labels, batch_size=args.batch, train=True, device=acc.device)
        model.train()
        t0 = time.perf_counter()
        for x, y in loader:
            loss = F.cross_entropy(model(norm(x)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _ = float(loss.detach())
        return n / (time.perf_counter() - t0)

    def ours() -> float:
        model, opt = fresh()
        model, opt = acc.prepare(model, opt)
        loader = TensorLoader(images, labels, batch_size=args.batch, train=True, device=acc.device)
        schedule = Schedule(opt, SchedConfig(name="constant"), 0.01, len(loader), 1)
        transform = TrainTransform(AugConfig(crop_padding=0, flip=False), Normalize(mean, std).to(acc.device))
        mixer = BatchMixer(LossConfig(), 10)
        t0 = time.perf_counter()
        train_one_epoch(model, loader, 0, opt, schedule, acc, transform, mixer, torch.nn.CrossEntropyLoss(), None,
                        0.0, TrainState(), lambda step, loss: None)
        return n / (time.perf_counter() - t0)

    bare_best, ours_best = 0.0, 0.0
    bare(), ours()  # warm-up of kernels, allocator and lazy imports
    for _ in range(args.repeats):
        bare_best = max(bare_best, bare())
        ours_best = max(ours_best, ours())
    print(f"model {args.model}, batch {args.batch}, {args.steps} steps, {torch.get_num_threads()} threads, "
          f"device {acc.device}")
    print(f"bare PyTorch loop : {bare_best:10.0f} images/s")
    print(f"cifar_dist step   : {ours_best:10.0f} images/s")
    print(f"ratio cifar_dist / bare = {ours_best / bare_best:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
