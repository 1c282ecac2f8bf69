"""Loader throughput on the real CIFAR-10 training set, as ratios to a torchvision DataLoader baseline.

    python bench/loader.py [--data DIR --name cifar10] [--batch 512] [--epochs 2]

Without --data it converts ../shared/data/cifar10-jpeg.tar.gz (or $CIFAR10_JPEG) into a temporary
folder first (raw mode, in a subprocess: FFCV's writer must not fork after a Loader ran here).
All three loaders do the same training augmentation -- random crop with 4 px zero padding and a
horizontal flip -- and deliver normalised float batches (B, 3, 32, 32) on the device:
  baseline  torchvision Dataset (PIL images) + DataLoader, num_workers=2, RandomCrop/Flip/ToTensor/Normalize
  ffcv      cifar_dist.data.FFCVLoader (compiled decode, then translate/flip on the device) + Normalize
  tensor    cifar_dist.data.TensorLoader (split resident on the device, batched crop/flip) + Normalize
Each is timed over whole epochs after one warm-up epoch (FFCV compiles its pipeline then); the best
epoch counts. Targets on a 2-core machine: ffcv >= 5x, tensor >= 8x the baseline.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def convert(out: Path) -> tuple[Path, str]:
    src = Path(os.environ.get("CIFAR10_JPEG", REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
    if not src.is_file():
        sys.exit(f"error: {src}: not found; pass --data DIR with cifar10_train.beton or set CIFAR10_JPEG")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "data_prep", str(src), "--out", str(out), "--name", "cifar10"], check=True,
                   stdout=subprocess.DEVNULL)
    print(f"converted {src.name} in {time.perf_counter() - t0:.1f} s")
    return out, "cifar10"


def epoch_rate(make_iter, n_epochs: int) -> float:
    """Best images/s over n_epochs timed epochs, after one warm-up epoch."""
    best = 0.0
    for e in range(n_epochs + 1):
        t0, n = time.perf_counter(), 0
        for x, _ in make_iter(e):
            n += x.shape[0]
        rate = n / (time.perf_counter() - t0)
        if e > 0:
            best = max(best, rate)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="folder with <name>_train.beton (default: convert)")
    ap.add_argument("--name", default="cifar10")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per loader (after one warm-up)")
    args = ap.parse_args()

    tmp = None
    if args.data is None:
        tmp = tempfile.TemporaryDirectory(prefix="cifar_dist_bench_")
        args.data, args.name = convert(Path(tmp.name))

    import torchvision.transforms as T
    from PIL import Image

    from cifar_dist.config import AugConfig
    from cifar_dist.data import (
        FFCVLoader,
        Normalize,
        Order,
        Split,
        TensorLoader,
        beton_paths,
        compute_threads,
        read_images,
    )

    threads = compute_threads()
    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train_path, _ = beton_paths(args.data, args.name)
    x, y = read_images(train_path)
    norm = Normalize(MEAN, STD).to(device)

    class PILDataset(torch.utils.data.Dataset):
        def __init__(self):
            self.images = [Image.fromarray(img) for img in x]
            self.tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                                 T.Normalize(MEAN, STD)])

        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return self.tf(self.images[i]), int(y[i])

    dl = torch.utils.data.DataLoader(PILDataset(), batch_size=args.batch, shuffle=True, drop_last=True, num_workers=2,
                                     persistent_workers=True)

    def baseline(epoch):
        for xb, yb in dl:
            yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)

    ffcv = FFCVLoader(Split(train_path), batch_size=args.batch, num_workers=threads, device=device, order=Order(train=True, seed=0), aug=AugConfig(crop_padding=4, flip=True))
    tensor = TensorLoader(x, y, batch_size=args.batch, device=device, order=Order(train=True, seed=0), aug=AugConfig(crop_padding=4, flip=True))

    def normalised(loader):
        def it(epoch):
            loader.set_epoch(epoch)
            for xb, yb in loader:
                yield norm(xb), yb
        return it

    rates = {}
    rates["baseline"] = epoch_rate(baseline, args.epochs)
    rates["ffcv"] = epoch_rate(normalised(ffcv), args.epochs)
    torch.set_num_threads(threads)
    rates["tensor"] = epoch_rate(normalised(tensor), args.epochs)
    print(f"{len(y):,} training images, batch {args.batch}, device {device}, {threads} threads")
    print(f"{'loader':28s} {'images/s':>10s} {'x baseline':>11s}  target")
    labels = {"baseline": "torchvision DataLoader (2 w)", "ffcv": "FFCV pipeline", "tensor": "device-resident tensor"}
    targets = {"baseline": "", "ffcv": ">= 5x", "tensor": ">= 8x"}
    for k in ("baseline", "ffcv", "tensor"):
        print(f"{labels[k]:28s} {rates[k]:10.0f} {rates[k] / rates['baseline']:10.2f}x  {targets[k]}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
