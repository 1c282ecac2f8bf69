"""A data set opened once: its two .beton files, its class names and the rows of each split a run uses.

    data = open_dataset(cfg.data)   # files checked, manifest and both label columns read, rows drawn
    data.train_rows, data.val_rows, data.test_rows   # rows of the files, sorted; val_rows None = no validation

Every limit and the validation split is a seeded class-stratified draw (`split_seed`), never the first rows of
a file, which in a class-sorted file would be one class. The loaders, the whitening init and the evaluation of
a trained run all read their files and rows from one `Dataset`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifar_dist.config import DataConfig
from cifar_dist.data import DataError, beton_paths, read_labels, read_manifest
from data_prep import output_paths


@dataclass(frozen=True, eq=False)
class Dataset:
    """What `open_dataset` found: the files, the class names and the rows of each split (see the module doc)."""

    config: DataConfig  # what was opened (dir, name, limits, split_seed, loader, normalisation)
    train_path: Path
    test_path: Path
    classes: list[str]  # label -> class name: the manifest's, else "0".."9"
    test_labels: np.ndarray  # (N_test,) int64: every label of the test file
    train_rows: np.ndarray  # rows of the train file to train on
    val_rows: np.ndarray | None  # rows of the train file to validate on; None without a validation split
    test_rows: np.ndarray  # rows of the test file to test on (every row without data.limit_test)

    def test_subset(self, limit: int) -> np.ndarray:
        """Rows of the test file for `limit` images (0 = every row), drawn as `data.limit_test` draws them."""
        _, _, rows = select_rows(np.zeros(0, dtype=np.int64), self.test_labels, 0, limit, 0, self.config.split_seed)
        return np.arange(len(self.test_labels)) if rows is None else rows


def open_dataset(d: DataConfig) -> Dataset:
    """Open the data set `d` names: DataError, one line naming the file or flag, for a missing .beton file, a
    torn manifest, a label without a class name, or a limit the files cannot meet."""
    paths = beton_paths(d.dir, d.name)
    classes = read_manifest(d.dir, d.name).get("class_names") or [str(i) for i in range(10)]
    train_labels, test_labels = (_checked_labels(path, classes, d) for path in paths)
    train_rows, val_rows, test_rows = select_rows(train_labels, test_labels, d.limit_train, d.limit_test,
                                                  d.val_size, d.split_seed)
    test_rows = np.arange(len(test_labels)) if test_rows is None else test_rows
    return Dataset(d, *paths, classes, test_labels, train_rows, val_rows, test_rows)


def _checked_labels(path: Path, classes: list[str], d: DataConfig) -> np.ndarray:
    """The labels of `path`; every one must name one of `classes` (DataError naming the file)."""
    labels = read_labels(path)
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        manifest = output_paths(d.dir, d.name)["manifest"]
        source = f"the {len(classes)} classes of {manifest}" if manifest.is_file() else "10 classes: no manifest"
        raise DataError(f"{path}: expected labels 0..{len(classes) - 1} ({source}), found labels "
                        f"{labels.min()}..{labels.max()}")
    return labels


def _class_quotas(counts: np.ndarray, n: int, rng: np.random.Generator, prefer: np.ndarray | None = None,
                  what: str = "--data.limit_train") -> np.ndarray:
    """Images to take per class so that the shares differ by at most one image.

    The n % K classes that get one image more are drawn with `rng`; `prefer` (a boolean mask) names
    classes to give them to first (or all of them and then others), so that a balanced subset split
    into two balanced parts leaves a balanced remainder.
    """
    k = len(counts)
    if n < k:
        raise DataError(f"{what}: expected at least {k} images (one per class), found {n}")
    quota = np.full(k, n // k, dtype=np.int64)
    order = rng.permutation(k)
    if prefer is not None:  # preferred classes first, each group in its drawn order
        order = np.concatenate([order[prefer[order]], order[~prefer[order]]])
    quota[order[: n % k]] += 1
    short = np.flatnonzero(quota > counts)
    if len(short):
        c = int(short[0])
        raise DataError(f"{what}: expected at most {int(counts[c])} images of class {c} for a class-balanced "
                        f"subset of {n}, found a share of {int(quota[c])}")
    return quota


def balanced_rows(labels: np.ndarray, n: int, seed: int, what: str = "--data.limit_train",
                  prefer: np.ndarray | None = None) -> np.ndarray:
    """A seeded, class-stratified subset of `n` rows (sorted), whatever the storage order of `labels`."""
    labels = np.asarray(labels)
    k = int(labels.max()) + 1 if len(labels) else 0
    counts = np.bincount(labels, minlength=k)
    rng = np.random.default_rng(seed)
    quota = _class_quotas(counts, n, rng, prefer, what)
    picked = [rng.permutation(np.flatnonzero(labels == c))[: quota[c]] for c in range(k)]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def train_val_split(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold `val_size` rows out for validation, class-stratified and seeded; both index arrays sorted.

    The classes that get an extra validation image are, where possible, the ones with an extra image in
    `labels`, so that a class-balanced input leaves class-balanced train and validation parts.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if val_size >= n:
        raise DataError(f"--data.val_size: expected fewer than the {n} training images, found {val_size}")
    counts = np.bincount(labels)
    prefer = counts > counts.min()
    val = balanced_rows(labels, val_size, seed, what="--data.val_size", prefer=prefer)
    return np.setdiff1d(np.arange(n), val), val


def select_rows(train_labels: np.ndarray, test_labels: np.ndarray, limit_train: int, limit_test: int,
                val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Rows of the train file to train on and to validate on, rows of the test file to test on (None = every
    row); each a seeded class-stratified draw, as the module docstring explains."""
    rows = np.arange(len(train_labels))
    if limit_train and limit_train < len(rows):
        rows = balanced_rows(train_labels, limit_train, seed, what="--data.limit_train")
    train_idx, val_idx = rows, None
    if val_size:
        tr, va = train_val_split(np.asarray(train_labels)[rows], val_size, seed)
        train_idx, val_idx = rows[tr], rows[va]
    test_idx = None
    if limit_test and limit_test < len(test_labels):
        test_idx = balanced_rows(test_labels, limit_test, seed, what="--data.limit_test")
    return train_idx, val_idx, test_idx
