"""Tiny, learnable, CIFAR-shaped datasets written as real .beton files, for tests and benchmarks.

The writing runs in a subprocess: FFCV's forked writer can deadlock after Loaders ran in the same
process (see the README, "FFCV pitfalls").
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_WRITER = r"""
import json, sys
import numpy as np
from ffcv.fields import IntField, RGBImageField
from ffcv.writer import DatasetWriter

out, name, n_train, n_test, noise = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])


def make(n, seed):
    # Class k = a colour of its own plus Gaussian noise: learnable in a few steps, never trivial.
    r = np.random.default_rng(seed)
    y = np.arange(n) % 10
    base = np.stack([(y * 25) % 256, (y * 70) % 256, (255 - y * 25) % 256], 1).astype(np.float32)
    x = base[:, None, None, :] + r.normal(0, noise, (n, 32, 32, 3))
    return np.clip(x, 0, 255).astype(np.uint8), y


for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
    x, y = make(n, seed)
    np.save(f"{out}/{name}_{split}_images.npy", x)
    np.save(f"{out}/{name}_{split}_labels.npy", y)
    fields = {"image": RGBImageField(write_mode="raw", max_resolution=32), "label": IntField()}
    pairs = list(zip(x, y.tolist()))  # (image, label): all an indexed dataset needs is len() and [i]
    DatasetWriter(f"{out}/{name}_{split}.beton", fields, num_workers=1).from_indexed_dataset(pairs)
classes = [f"class{k}" for k in range(10)]
json.dump({"dataset": name, "class_names": classes}, open(f"{out}/{name}_manifest.json", "w"))
"""


def write_tiny_betons(out_dir: Path, name: str = "tiny", n_train: int = 400, n_test: int = 200,
                      noise: float = 40.0) -> Path:
    """Write <name>_train.beton / <name>_test.beton (+ the arrays as .npy, + a manifest) into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", _WRITER, str(out_dir), name, str(n_train), str(n_test), str(noise)],
                   check=True, capture_output=True, timeout=300)
    return out_dir
