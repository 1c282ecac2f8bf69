"""Throughput of cifar_dist's training loop against a bare PyTorch loop (same model, batch, data, device).

    python bench/engine.py [--model simple_cnn] [--batch 256] [--images 8192] [--epochs 3] [--repeats 3]

Data: `--images` random CIFAR-shaped images written to a real .beton file in a temporary folder.
cifar_dist side: the real `cifar_dist.engine.train` (Accelerator, device-resident loader, TrainTransform,
BatchMixer, Schedule, periodic global checks, TensorBoard, checkpoint per epoch) with crop/flip off;
its images/s is metrics.jsonl's (training time of an epoch, loader time included), best epoch after
the first. Bare side: a plain loop over the same uint8 batches (normalise, forward, cross-entropy,
backward, SGD step), best epoch after the first. Runs alternate, bare then cifar_dist, `--repeats` times;
each pair gives a ratio, and the median of those is the result (this CPU's speed drifts by more than the
overhead between one run and the next, so one pair proves little). Target: ratio >= 0.95.
"""

from __future__ import annotations

import argparse
import json
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


def bare(model_name: str, images, labels, batch: int, epochs: int, device) -> float:
    from cifar_dist.data import Normalize, Order, TensorLoader
    from cifar_dist.models import create_model

    torch.manual_seed(0)
    model = create_model(model_name).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    norm = Normalize(MEAN, STD).to(device)
    loader = TensorLoader(images, labels, batch_size=batch, device=device, order=Order(train=True))
    model.train()
    best = 0.0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        t0, n = time.perf_counter(), 0
        for x, y in loader:
            loss = F.cross_entropy(model(norm(x)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += y.numel()
        float(loss.detach())  # wait for the device
        if epoch:
            best = max(best, n / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="simple_cnn")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--images", type=int, default=8192)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="bare/cifar_dist pairs; the median ratio is reported")
    args = ap.parse_args()

    from accelerate.state import AcceleratorState, GradientState

    from cifar_dist.data import beton_paths, compute_threads, read_images
    from cifar_dist.engine import train
    from cifar_dist.presets import resolve
    from cifar_dist.testing import write_tiny_betons

    pairs = []
    with tempfile.TemporaryDirectory(prefix="cifar_dist_bench_") as tmp:
        data = write_tiny_betons(Path(tmp) / "data", "bench", n_train=args.images, n_test=512)
        x, y = read_images(beton_paths(data, "bench")[0])
        torch.set_num_threads(compute_threads())
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        for i in range(args.repeats):
            baseline = bare(args.model, x, y, args.batch, args.epochs, device)
            cfg = resolve("smoke", overrides={
                "data.dir": str(data), "data.name": "bench", "data.val_size": 0, "data.limit_train": 0,
                "data.limit_test": 512, "aug.crop_padding": 0, "aug.flip": False, "model.name": args.model,
                "model.channels_last": False, "optim.name": "sgd", "optim.lr": 0.01, "optim.momentum": 0.9,
                "optim.weight_decay": 0.0, "run.global_batch_size": args.batch, "run.epochs": args.epochs,
                "run.out_dir": str(Path(tmp) / "runs"), "run.name": f"bench{i}", "run.progress": False,
            })
            assert train(cfg) == 0
            AcceleratorState._reset_state(True)
            GradientState._reset_state()
            metrics = Path(tmp) / "runs" / f"bench{i}" / "metrics.jsonl"
            rows = [json.loads(line) for line in metrics.read_text().splitlines()]
            ours = max(r["images_per_s"] for r in rows[1:])
            pairs.append((baseline, ours))
    print(f"model {args.model}, batch {args.batch}, {args.images} images, {torch.get_num_threads()} threads, "
          f"device {device}")
    for i, (baseline, ours) in enumerate(pairs):
        print(f"pair {i}: bare {baseline:8.0f} images/s, cifar_dist {ours:8.0f} images/s, ratio {ours / baseline:.3f}")
    ratio = statistics.median(ours / baseline for baseline, ours in pairs)
    print(f"ratio cifar_dist / bare = {ratio:.3f} (median of {len(pairs)} pairs; target >= 0.95)")


if __name__ == "__main__":
    main()
