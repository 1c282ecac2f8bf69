"""Builders of tiny CIFAR sources in the official formats, for tests/test_data_prep.py.

Each builder returns the expected content as `Expected` (images uint8 (N, 32, 32, 3) RGB, int64
labels, class names) so tests can compare what they read back from the .beton files pixel by pixel.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass
class Expected:
    """What a source holds: per split images (N, 32, 32, 3) uint8 RGB and labels (N,) int64."""

    class_names: tuple[str, ...]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return (
            (self.train_images, self.train_labels)
            if name == "train"
            else (self.test_images, self.test_labels)
        )


def random_images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def smooth_images(rng: np.random.Generator, n: int) -> np.ndarray:
    """Low-frequency images (JPEG-friendly), so jpg-mode error bounds are meaningful."""
    y, x = np.mgrid[0:32, 0:32]
    out = np.empty((n, 32, 32, 3), dtype=np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(0.05, 0.3, 3)
        base = rng.uniform(40, 200, 3)
        for ch in range(3):
            out[i, :, :, ch] = np.clip(base[ch] + 50 * np.sin(a * x + b * y + c * ch + i), 0, 255)
    return out


def _rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) HWC -> (N, 3072) row-major CHW, the official b'data' layout."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))


def _dump(path: Path, obj: object) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def make_cifar10_dir(
    root: Path, *, per_batch: int = 3, n_test: int = 5, seed: int = 0, batch_edit: dict | None = None
) -> Expected:
    """Write ``root/cifar-10-batches-py/`` (data_batch_1..5, test_batch, batches.meta) with random images.

    `batch_edit` maps a file name to a dict that replaces that batch's pickled dict.
    """
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    train_imgs, train_labels = [], []
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        imgs = random_images(rng, n)
        labels = rng.integers(0, 10, n).tolist()
        batch = {
            b"batch_label": f"{name} of 5".encode(),
            b"labels": labels,
            b"data": _rows(imgs),
            b"filenames": [f"img_{name}_{i}.png".encode() for i in range(n)],
        }
        _dump(d / name, (batch_edit or {}).get(name, batch))
        if name == "test_batch":
            test_imgs, test_labels = imgs, labels
        else:
            train_imgs.append(imgs)
            train_labels += labels
    meta = {
        b"num_cases_per_batch": per_batch,
        b"label_names": [c.encode() for c in CIFAR10_CLASSES],
        b"num_vis": 3072,
    }
    _dump(d / "batches.meta", meta)
    return Expected(
        CIFAR10_CLASSES,
        np.concatenate(train_imgs),
        np.asarray(train_labels, dtype=np.int64),
        test_imgs,
        np.asarray(test_labels, dtype=np.int64),
    )


def make_cifar100_dir(
    root: Path, *, n_train: int = 12, n_test: int = 6, seed: int = 1
) -> tuple[Expected, Expected]:
    """Write ``root/cifar-100-python/`` (train, test, meta); return (fine, coarse) expectations."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    fine_names = tuple(f"fine{i:02d}" for i in range(100))
    coarse_names = tuple(f"coarse{i:02d}" for i in range(20))
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        imgs = random_images(rng, n)
        fine = rng.integers(0, 100, n)
        coarse = fine // 5
        _dump(
            d / split,
            {
                b"filenames": [f"{split}_{i}.png".encode() for i in range(n)],
                b"batch_label": f"{split} batch".encode(),
                b"fine_labels": fine.tolist(),
                b"coarse_labels": coarse.tolist(),
                b"data": _rows(imgs),
            },
        )
        out[split] = (imgs, fine.astype(np.int64), coarse.astype(np.int64))
    _dump(
        d / "meta",
        {
            b"fine_label_names": [n.encode() for n in fine_names],
            b"coarse_label_names": [n.encode() for n in coarse_names],
        },
    )
    fine = Expected(fine_names, out["train"][0], out["train"][1], out["test"][0], out["test"][1])
    coarse = Expected(coarse_names, out["train"][0], out["train"][2], out["test"][0], out["test"][2])
    return fine, coarse


def make_tar(src: Path, tar_path: Path, *, arcname: str | None = None) -> Path:
    """Tar(.gz) `src` (a folder) into `tar_path`; the archive's top folder is `arcname` (default src's name).

    ``arcname=""`` puts the folder's contents at the top of the archive.
    """
    mode = "w:gz" if tar_path.name.endswith((".gz", ".tgz")) else "w"
    with tarfile.open(tar_path, mode) as tar:
        if arcname == "":
            for child in sorted(src.iterdir()):
                tar.add(child, arcname=child.name)
        else:
            tar.add(src, arcname=arcname or src.name)
    return tar_path


def make_cifar10_archive(tmp: Path, **kwargs: object) -> tuple[Path, Expected]:
    """A tiny ``cifar-10-python.tar.gz`` in the official layout (top folder cifar-10-batches-py/)."""
    expected = make_cifar10_dir(tmp / "c10src", **kwargs)
    return make_tar(tmp / "c10src" / "cifar-10-batches-py", tmp / "cifar-10-python.tar.gz"), expected


def make_image_folder(
    root: Path,
    *,
    classes: tuple[str, ...] = ("cat", "dog", "frog"),
    n_train: int = 4,
    n_test: int = 2,
    fmt: str = "png",
    seed: int = 2,
    modes: tuple[str, ...] = ("RGB",),
) -> Expected:
    """Write ``root/train/<class>/NNN.<fmt>`` and ``root/test/<class>/...``; images cycle through `modes`.

    The expected pixels are what PIL returns after ``convert("RGB")`` of each saved file.
    """
    rng = np.random.default_rng(seed)
    arrays: dict[str, tuple[list[np.ndarray], list[int]]] = {"train": ([], []), "test": ([], [])}
    k = 0
    for split, n in (("train", n_train), ("test", n_test)):
        for label, cls in enumerate(sorted(classes)):
            folder = root / split / cls
            folder.mkdir(parents=True)
            imgs = random_images(rng, n) if fmt == "png" else smooth_images(rng, n)
            for i, img in enumerate(imgs):
                im = Image.fromarray(img).convert(modes[k % len(modes)])
                k += 1
                path = folder / f"{i:03d}.{fmt}"
                im.save(path)
                with Image.open(path) as back:
                    arrays[split][0].append(np.asarray(back.convert("RGB")))
                arrays[split][1].append(label)
    return Expected(
        tuple(sorted(classes)),
        np.stack(arrays["train"][0]),
        np.asarray(arrays["train"][1], dtype=np.int64),
        np.stack(arrays["test"][0]),
        np.asarray(arrays["test"][1], dtype=np.int64),
    )


def in_written_order(expected: Expected, seed: int = 0) -> Expected:
    """An image folder's content (class-major, as `make_image_folder` returns it) in the order data_prep
    writes it: each split permuted by ``numpy.random.default_rng(seed).permutation(n)``, the seed being
    the manifest's ``order["seed"]``."""
    train = np.random.default_rng(seed).permutation(len(expected.train_labels))
    test = np.random.default_rng(seed).permutation(len(expected.test_labels))
    return Expected(
        expected.class_names,
        expected.train_images[train],
        expected.train_labels[train],
        expected.test_images[test],
        expected.test_labels[test],
    )


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def output_files(out: Path) -> list[str]:
    """Names of betons, manifests and temporaries in `out` (empty if `out` does not exist)."""
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if p.name.endswith((".beton", ".json")) or ".tmp-" in p.name)


def run_cli(
    *args: str, timeout: float = 600, module: str = "data_prep", **popen: object
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m data_prep ARGS`` (or another module) from the repository root in a fresh process."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )
