"""Readers of the official CIFAR python format: the archives and their extracted batches folders.

Pickles are loaded with a restricted unpickler that only accepts the numpy array types the official
files use, so a hostile archive cannot run code. Both readers take the dataset `data_prep.sources` classified
the source as and return `SourceData` in the files' own order (the official batches are already mixed).
"""

from __future__ import annotations

import functools
import io
import pickle
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .archives import iter_members, open_tar, read_member
from .arrays import SIDE, SourceData, SplitArrays
from .errors import DataPrepError

CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
CIFAR10_META = "batches.meta"
CIFAR100_FILES = ("train", "test")
CIFAR100_META = "meta"
CIFAR10_DIR, CIFAR100_DIR = "cifar-10-batches-py", "cifar-100-python"
SOURCE_ORDER = {"shuffled": False}  # the official batches are already mixed


def batch_files(dataset: str) -> tuple[str, ...]:
    """The file names of the official layout of `dataset` ("cifar10" or "cifar100"), meta file last."""
    return (*CIFAR10_FILES, CIFAR10_META) if dataset == "cifar10" else (*CIFAR100_FILES, CIFAR100_META)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals numpy arrays (and py2 byte strings) need."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if module.startswith("numpy.core"):  # numpy >= 2 keeps the implementation in numpy._core
            module = "numpy._core" + module[len("numpy.core") :]
        return super().find_class(module, name)


def _load_pickle(data: bytes, where: str) -> dict[bytes, Any]:
    """Unpickle a CIFAR batch/meta file into a dict with bytes keys."""
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # unpickling garbage raises many types (UnpicklingError, EOFError, ...)
        raise DataPrepError(
            where, "a pickled dict (CIFAR python format)", f"unreadable data ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(obj, dict):
        raise DataPrepError(where, "a pickled dict (CIFAR python format)", f"a pickled {type(obj).__name__}")
    return {(k.encode() if isinstance(k, str) else k): v for k, v in obj.items()}


def _require_keys(d: Mapping[bytes, Any], keys: Sequence[bytes], where: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        found = ", ".join(repr(k) for k in sorted(d, key=repr)) or "no keys"
        raise DataPrepError(where, f"keys {', '.join(repr(k) for k in keys)}", f"keys {found}")


def _names(value: Any, where: str, key: bytes) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise DataPrepError(where, f"{key!r} as a non-empty list of class names", type(value).__name__)
    return tuple(v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in value)


def _batch_arrays(d: Mapping[bytes, Any], label_key: bytes, num_classes: int, where: str) -> SplitArrays:
    """Validate one batch dict and convert its CHW rows to (N, 32, 32, 3) RGB images."""
    _require_keys(d, (b"data", label_key), where)
    data = d[b"data"]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3 * SIDE * SIDE
    ):
        found = (
            f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise DataPrepError(where, "b'data' as a uint8 array of shape (N, 3072)", found)
    try:
        labels = np.asarray(d[label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataPrepError(
            where, f"{label_key!r} as a list of integers", f"{type(d[label_key]).__name__} ({exc})"
        ) from exc
    if labels.shape[0] != data.shape[0]:
        raise DataPrepError(where, f"{data.shape[0]} labels (one per row of b'data')", f"{labels.shape[0]}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataPrepError(
            where, f"labels in 0..{num_classes - 1}", f"labels in {labels.min()}..{labels.max()}"
        )
    images = np.ascontiguousarray(data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))
    return SplitArrays(images, labels)


def _parse_cifar(
    dataset: str, files: Mapping[str, Callable[[], bytes]], where: Callable[[str], str], labels: str
) -> SourceData:
    """Build SourceData from the raw bytes of the official batch files (`files` maps file name -> reader)."""
    for name in batch_files(dataset):
        if name not in files:
            raise DataPrepError(where(name), "this file of the official layout", "it missing")
    if dataset == "cifar10":
        meta_key, label_key = b"label_names", b"labels"
        meta_name, train_names, test_names = CIFAR10_META, CIFAR10_FILES[:5], CIFAR10_FILES[5:]
    else:
        meta_key = b"fine_label_names" if labels == "fine" else b"coarse_label_names"
        label_key = b"fine_labels" if labels == "fine" else b"coarse_labels"
        meta_name, train_names, test_names = CIFAR100_META, ("train",), ("test",)
    meta = _load_pickle(files[meta_name](), where(meta_name))
    _require_keys(meta, (meta_key,), where(meta_name))
    class_names = _names(meta[meta_key], where(meta_name), meta_key)

    def load(names: Sequence[str]) -> SplitArrays:  # the batches one after the other
        parts = [_batch_arrays(_load_pickle(files[n](), where(n)), label_key, len(class_names), where(n))
                 for n in names]
        return SplitArrays(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))

    return SourceData(dataset, class_names, load(train_names), load(test_names))


def read_cifar_archive(path: Path, dataset: str, given: str, *, labels: str, progress: bool) -> SourceData:
    """Read an official ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` (`given`, as the user named it)
    in one streaming pass."""
    wanted = batch_files(dataset)
    blobs: dict[str, bytes] = {}
    member_of: dict[str, str] = {}
    with (
        open_tar(path, given) as tar,
        tqdm(unit="B", unit_scale=True, desc="read archive", disable=not progress) as bar,
    ):
        for member in iter_members(tar, given):
            bar.update(member.size)
            parts = member.name.split("/")
            if member.isfile() and parts[-1] in wanted and parts[-1] not in blobs:
                blobs[parts[-1]] = read_member(tar, member, given)
                member_of[parts[-1]] = member.name
    folder = CIFAR10_DIR if dataset == "cifar10" else CIFAR100_DIR

    def where(name: str) -> str:
        return f"{given}:{member_of.get(name, f'{folder}/{name}')}"

    files = {name: (lambda b=blob: b) for name, blob in blobs.items()}
    return _parse_cifar(dataset, files, where, labels)


def read_cifar_dir(path: Path, dataset: str, *, labels: str) -> SourceData:
    """Read an extracted ``cifar-10-batches-py/`` or ``cifar-100-python/`` folder."""
    names = batch_files(dataset)
    files = {n: functools.partial(_read_file, path / n) for n in names if (path / n).is_file()}
    return _parse_cifar(dataset, files, lambda n: str(path / n), labels)


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataPrepError(path, "a readable file", f"an error ({exc.strerror or exc})") from exc

