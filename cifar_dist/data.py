"""Loaders that feed training from `.beton` files written by `cifar-dist prepare`.

Two loaders share one interface: iterating yields `(images, labels)` with `images` a uint8 tensor
of shape (B, 3, 32, 32) on the target device (already cropped/flipped/cut out for training) and
`labels` an int64 tensor of shape (B,). Normalisation to float happens afterwards on the device
(`Normalize`): moving uint8 moves 4x fewer bytes to the GPU, and uint8-only augmentations
(AutoAugment) can run in between.

- `TensorLoader` reads a split once into one uint8 tensor on the device. The fastest path for
  CIFAR-sized data, and the fallback where FFCV's loader cannot run.
- `FFCVLoader` wraps `ffcv.loader.Loader` (decoding in FFCV's compiled pipeline, batches moved to
  the device by its `ToDevice`).
Both augment training batches on the device with `cifar_dist.augment.DeviceAugment` (crop, flip, cutout,
drawn per (seed, epoch, step, rank)): the two loaders are one recipe, and a resumed epoch gets the same crops.

Sharding: with `world_size` processes each rank sees a disjoint shard; training drops the
ragged tail so every rank takes the same number of steps (`drop_last`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cifar_dist.augment import NO_AUG, DeviceAugment
from cifar_dist.config import AugConfig
from cifar_dist.errors import InputError


class DataError(InputError):
    """A missing or malformed dataset file; the message is one line naming the file."""


@dataclass(frozen=True)
class Split:
    """Where a split lives: the .beton file and, optionally, which of its rows to use."""

    path: Path
    indices: np.ndarray | None = None  # rows of the file, in order; None = all rows


@dataclass(frozen=True)
class Order:
    """Which rows a loader yields, in which order: shuffled per epoch from `seed` when `train`, sharded
    over `world_size` processes (this one is `rank`); `drop_last` defaults to `train`."""

    train: bool = False
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    drop_last: bool | None = None

    @property
    def drops_last(self) -> bool:
        return self.train if self.drop_last is None else self.drop_last


def beton_paths(data_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Return the train and test .beton paths, or raise DataError naming the missing one."""
    from data_prep import output_paths  # the data folder's names are data_prep's

    d, files = Path(data_dir), output_paths(data_dir, name)
    train, test = files["train"], files["test"]
    for p in (train, test):
        if not p.is_file():
            raise DataError(
                f"--data.dir: {p}: file not found; expected {name}_train.beton and {name}_test.beton "
                f"written by `cifar-dist prepare SOURCE --out {d}`"
            )
    return train, test


def read_manifest(data_dir: str | Path, name: str) -> dict:
    """The manifest `cifar-dist prepare` wrote beside the .beton files ({} without one); DataError naming it
    when it is torn or its class_names is not a non-empty list of names."""
    from data_prep import output_paths

    p = output_paths(data_dir, name)["manifest"]
    if not p.is_file():
        return {}
    try:
        manifest = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{p}: expected the JSON manifest `cifar-dist prepare` writes, found unreadable JSON "
                        f"({getattr(e, 'msg', None) or e}); run `cifar-dist prepare` again") from None
    names = manifest.get("class_names") if isinstance(manifest, dict) else None
    if not isinstance(manifest, dict) or (names is not None and not (
            isinstance(names, list) and names and all(isinstance(n, str) for n in names))):
        raise DataError(f"{p}: expected an object with class_names, a non-empty list of names, found "
                        f"{json.dumps(names if isinstance(manifest, dict) else manifest)[:60]}")
    return manifest


def read_images(path: Path, indices: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a .beton file into arrays: images (N, 32, 32, 3) uint8, labels (N,) int64.

    The reader is data_prep's (no FFCV Loader: no JIT warm-up, no thread-count side effects).
    """
    from data_prep import DataPrepError, read_beton

    try:
        return read_beton(path, indices)
    except DataPrepError as e:
        raise DataError(str(e)) from e


def read_labels(path: Path) -> np.ndarray:
    """The labels of a .beton file (N,) int64, without decoding its images."""
    from data_prep import DataPrepError
    from data_prep import read_labels as read

    try:
        return np.asarray(read(path), dtype=np.int64)
    except DataPrepError as e:
        raise DataError(str(e)) from e


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (taskset, a SLURM/cgroup CPU set), capped by
    SLURM_CPUS_PER_TASK inside a SLURM task that set it."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    per_task = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if per_task.isdigit() and int(per_task) > 0:
        cpus = min(cpus, int(per_task))
    return max(1, cpus)


def compute_threads() -> int:
    """Torch threads this process should use: OMP_NUM_THREADS, else its usable CPUs split over the local
    processes (LOCAL_WORLD_SIZE, set by the launcher).

    `import ffcv` sets torch's thread count to 1 and every FFCV Loader/epoch resets it to the loader's
    worker count, silently slowing model compute in the same process; FFCVLoader puts this back.
    """
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, usable_cpus() // local)


class TensorLoader:
    """A split resident on the device as one uint8 tensor, augmented batch-wise (see the module doc).

    Order and augmentation are a pure function of (seed, epoch, step, rank): `set_epoch(e)` then iterate;
    `iter_from(step)` starts mid-epoch, which is how an interrupted epoch resumes.
    """

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, *, batch_size: int,
                 device: torch.device | str = "cpu", order: Order = Order(), aug: AugConfig = NO_AUG,
                 cutout_fill: tuple[int, ...] = (0, 0, 0)):
        self.device = torch.device(device)
        imgs = torch.as_tensor(images)
        if imgs.ndim != 4:
            raise DataError(f"expected images of shape (N, H, W, 3) or (N, 3, H, W), found {tuple(imgs.shape)}")
        if imgs.shape[-1] == 3 and imgs.shape[1] != 3:
            imgs = imgs.permute(0, 3, 1, 2)
        self.images = imgs.contiguous().to(self.device)
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(self.device)
        self.batch_size, self.order, self.train = batch_size, order, order.train
        self.augment = DeviceAugment(aug, cutout_fill, len(self.labels), order.seed, order.rank, self.device)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _shard(self) -> torch.Tensor:
        n, o = len(self.labels), self.order
        if self.train:
            g = torch.Generator().manual_seed(o.seed * 7919 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if o.drops_last:
            # Global batch s is order[s*B:(s+1)*B] whatever the world size; rank r takes its r-th
            # slice, so N processes see exactly the batches one process would (DDP == 1 process).
            steps, b = len(self), self.batch_size
            return order[: steps * b * o.world_size].view(steps, o.world_size, b)[:, o.rank].reshape(-1)
        return order[o.rank :: o.world_size]

    def __len__(self) -> int:
        n, o = len(self.labels), self.order
        if o.drops_last:
            return n // (self.batch_size * o.world_size)
        return math.ceil(len(range(o.rank, n, o.world_size)) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self._shard().to(self.device)
        for step in range(start_step, len(self)):
            sel = idx[step * self.batch_size : (step + 1) * self.batch_size]
            x, y = self.images[sel], self.labels[sel]
            if self.train:
                x = self.augment(x, sel, self.epoch, step)
            yield x, y


def ffcv_pipelines(device: torch.device) -> tuple[list, list]:
    """FFCV's image and label pipelines: decode, then `ToDevice(device)`, so batches land on the device
    unaugmented (training augmentation runs there, in `DeviceAugment`, the tensor loader's own code).

    `ToTorchImage` comes BEFORE `ToDevice`: placed after it, `ToTorchImage(channels_last=False)` asks FFCV for
    a buffer without a device (a pinned host buffer) and copies the device batch back into it, so on a GPU the
    images came back on the CPU while the labels stayed on the GPU. Here the HWC -> CHW permute is a host copy
    into a pinned buffer and `ToDevice` moves the contiguous NCHW uint8 batch to the device (non-blocking, on
    FFCV's own CUDA stream, which the consumer's stream waits for).
    """
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage

    image_ops = [SimpleRGBImageDecoder(), ToTensor(), ToTorchImage(channels_last=False),
                 ToDevice(device, non_blocking=True)]
    label_ops = [IntDecoder(), ToTensor(), Squeeze(), ToDevice(device, non_blocking=True)]
    return image_ops, label_ops


class FFCVLoader:
    """FFCV's compiled loader over a .beton file (`ffcv_pipelines`), with the same interface as `TensorLoader`.
    `order.world_size > 1` shards with FFCV's `distributed=True` (rank and world size from torch.distributed).
    """

    def __init__(self, split: Split, *, batch_size: int, device: torch.device | str = "cpu", order: Order = Order(),
                 aug: AugConfig = NO_AUG, cutout_fill: tuple[int, ...] = (0, 0, 0), num_workers: int = 2):
        from ffcv.loader import Loader, OrderOption

        self.device = torch.device(device)
        image_ops, label_ops = ffcv_pipelines(self.device)
        self.train, self.batch_size = order.train, batch_size
        self.indices = None if split.indices is None else np.asarray(split.indices)
        n = len(read_labels(split.path)) if self.indices is None else len(self.indices)  # tables, not images
        self.augment = DeviceAugment(aug, cutout_fill, n, order.seed, order.rank, self.device)
        self.loader = Loader(
            str(split.path),
            batch_size=batch_size,
            num_workers=num_workers,
            order=OrderOption.RANDOM if order.train else OrderOption.SEQUENTIAL,
            drop_last=order.drops_last,
            indices=self.indices,
            pipelines={"image": image_ops, "label": label_ops},
            distributed=order.world_size > 1,
            seed=order.seed,
        )
        torch.set_num_threads(compute_threads())  # FFCV resets torch's thread count; put it back
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        # FFCV's Loader keeps its own epoch counter and seeds its order with seed + epoch.
        self.loader.next_epoch = epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def _positions(self) -> torch.Tensor | None:
        """Positions in the split of this epoch's images, in FFCV's batch order, on the device (one copy per
        epoch); None when the augmentation does not need them. Call before `iter(self.loader)`, which moves
        FFCV's epoch on."""
        if not (self.train and self.augment.needs_rows):
            return None
        order = np.asarray(self.loader.next_traversal_order())  # rows of the file; batch s = order[s*B:(s+1)*B]
        if self.indices is not None:
            where = np.full(int(self.indices.max()) + 1, -1, dtype=np.int64)
            where[self.indices] = np.arange(len(self.indices))
            order = where[order]
        return torch.as_tensor(order.astype(np.int64)).to(self.device)

    def iter_from(self, start_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        positions = self._positions()
        it = iter(self.loader)
        torch.set_num_threads(compute_threads())
        b = self.batch_size
        for step, (x, y) in enumerate(it):
            if step >= start_step:
                if self.train:
                    rows = None if positions is None else positions[step * b : step * b + len(y)]
                    x = self.augment(x, rows, self.epoch, step)
                yield x, y.long()


class Normalize(torch.nn.Module):
    """uint8 (B, 3, H, W) -> float (B, 3, R, R), normalised, optionally channels_last and resized.

    `mean`/`std` are RGB in [0, 1]. Resizing (bilinear, antialiased) happens before normalisation
    so a model trained at a different resolution (seed 000's 320 px) sees the same pipeline.
    """

    def __init__(self, mean, std, resolution: int = 32, channels_last: bool = False):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255)
        self.resolution, self.channels_last = resolution, channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if x.shape[-1] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True,
                              align_corners=False)
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
