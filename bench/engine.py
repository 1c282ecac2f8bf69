"""Throughput of cifar_dist's training loop against a bare PyTorch loop (same model, batch, data, device).

    python bench/engine.py [--model simple_cnn] [--batch 256] [--images 4096] [--rounds 7]

Data: `--images` random CIFAR-shaped images written to a real .beton file in a temporary folder.
cifar_dist side: a real session (`open_session`: Accelerator, device-resident loader, TrainTransform,
BatchMixer, Schedule) whose epochs run through `run_epoch`, exactly as `train` runs them (the per-step
monitor with its periodic global checks and TensorBoard scalars, then evaluation, the metrics row and a
checkpoint), with crop/flip off; its images/s is the metrics row's (training time of the epoch, loader
time included). Bare side: a plain loop over the same uint8 images (its own model, SGD and shuffled
TensorLoader; normalise, forward, cross-entropy, backward, SGD step).

The two sides alternate epoch by epoch in one process: `--rounds` rounds of one bare epoch then one
cifar_dist epoch. This CPU's speed drifts by 10-20 % from one minute to the next, more than the overhead
being measured, so each round's ratio compares two epochs a few seconds apart; the first round warms up
and is left out, and the result is the median of the others. A bare epoch before the session opens is
printed too: if opening a session slowed the process down (thread counts, global flags), the bare
epochs after it would show it against that one. Target: ratio >= 0.95.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


class BareLoop:
    """The baseline: a plain PyTorch training loop, one epoch per call, returning its images/s."""

    def __init__(self, model: torch.nn.Module, loader, normalize: torch.nn.Module):
        self.model, self.loader, self.norm = model, loader, normalize
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        self.epochs = 0

    def epoch(self) -> float:
        self.model.train()
        self.loader.set_epoch(self.epochs)
        self.epochs += 1
        t0, n = time.perf_counter(), 0
        for x, y in self.loader:
            loss = F.cross_entropy(self.model(self.norm(x)), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            n += y.numel()
        float(loss.detach())  # wait for the device
        return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="simple_cnn")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=7, help="bare/cifar_dist epoch pairs (the first warms up)")
    args = ap.parse_args()
    if args.rounds < 2:
        ap.error(f"--rounds: expected at least 2 (the first round warms up), found {args.rounds}")

    from cifar_dist.data import Normalize, Order, TensorLoader, beton_paths, compute_threads, read_images
    from cifar_dist.engine.loop import run_epoch
    from cifar_dist.engine.monitor import Monitor, SignalFlag
    from cifar_dist.engine.session import open_session
    from cifar_dist.models import create_model
    from cifar_dist.presets import resolve
    from cifar_dist.testing import write_tiny_betons

    with tempfile.TemporaryDirectory(prefix="cifar_dist_bench_") as tmp:
        data = write_tiny_betons(Path(tmp) / "data", "bench", n_train=args.images, n_test=512)
        x, y = read_images(beton_paths(data, "bench")[0])
        torch.set_num_threads(compute_threads())
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(0)
        model = create_model(args.model).to(device)
        bare = BareLoop(model, TensorLoader(x, y, batch_size=args.batch, device=device, order=Order(train=True)),
                        Normalize(MEAN, STD).to(device))
        bare.epoch()  # warm-up
        before = bare.epoch()

        cfg = resolve("smoke", overrides={
            "data.dir": str(data), "data.name": "bench", "data.val_size": 0, "data.limit_train": 0,
            "data.limit_test": 512, "aug.crop_padding": 0, "aug.flip": False, "model.name": args.model,
            "model.channels_last": False, "optim.name": "sgd", "optim.lr": 0.01, "optim.momentum": 0.9,
            "optim.weight_decay": 0.0, "run.global_batch_size": args.batch, "run.epochs": args.rounds,
            "run.out_dir": str(Path(tmp) / "runs"), "run.name": "bench", "run.progress": False,
        })
        session = open_session(cfg)
        monitor = Monitor(session, SignalFlag())
        rounds = []
        for _ in range(args.rounds):
            baseline = bare.epoch()
            row, _ = run_epoch(session, monitor)
            rounds.append((baseline, row["images_per_s"]))
        session.logger.close()
        session.accelerator.end_training()

    print(f"model {args.model}, batch {args.batch}, {args.images} images, {torch.get_num_threads()} threads, "
          f"device {device}; bare loop before the session: {before:.0f} images/s")
    for i, (baseline, ours) in enumerate(rounds):
        note = " (warm-up, left out)" if i == 0 else ""
        print(f"round {i}: bare {baseline:8.0f} images/s, cifar_dist {ours:8.0f} images/s, "
              f"ratio {ours / baseline:.3f}{note}")
    ratio = statistics.median(ours / baseline for baseline, ours in rounds[1:])
    print(f"ratio cifar_dist / bare = {ratio:.3f} (median of {len(rounds) - 1} rounds; target >= 0.95)")


if __name__ == "__main__":
    main()
