"""Class-balanced subsets: limits and validation splits are stratified draws, whatever the file order."""

import numpy as np
import pytest

from cifar_dist.data import DataError
from cifar_dist.dataset import balanced_rows, select_rows, train_val_split


def sorted_labels(per_class: int, k: int = 10) -> np.ndarray:
    return np.repeat(np.arange(k), per_class)  # the order an image-folder tree is read in


def shares(labels: np.ndarray, rows: np.ndarray, k: int = 10) -> np.ndarray:
    return np.bincount(labels[rows], minlength=k)


@pytest.mark.parametrize("n", [10, 11, 19, 57, 100, 333])
def test_balanced_rows_cover_every_class_within_one_image(n):
    labels = sorted_labels(50)
    rows = balanced_rows(labels, n, seed=3)
    counts = shares(labels, rows)
    assert len(rows) == n and len(set(rows)) == n
    assert counts.max() - counts.min() <= 1 and counts.min() >= n // 10
    assert np.array_equal(rows, balanced_rows(labels, n, seed=3))  # seeded
    assert not np.array_equal(rows, balanced_rows(labels, n, seed=4))


def test_limit_below_the_number_of_classes_is_an_input_error():
    with pytest.raises(DataError, match=r"--data.limit_train: expected at least 10 images \(one per class\), found 9"):
        balanced_rows(sorted_labels(5), 9, seed=0)


def test_a_limit_larger_than_a_class_allows_is_an_input_error():
    with pytest.raises(DataError, match="--data.limit_test: expected at most"):
        balanced_rows(np.repeat(np.arange(10), [1] + [20] * 9), 30, seed=0, what="--data.limit_test")  # class 0: 1 row


@pytest.mark.parametrize("n,val", [(100, 10), (103, 17), (57, 23), (500, 50)])
def test_train_val_split_is_stratified_disjoint_and_leaves_a_balanced_train_part(n, val):
    labels = sorted_labels(60)
    rows = balanced_rows(labels, n, seed=1)
    tr, va = train_val_split(labels[rows], val, seed=2)
    assert len(va) == val and len(tr) == n - val
    assert not set(tr) & set(va) and set(tr) | set(va) == set(range(n))
    for part in (tr, va):
        counts = shares(labels[rows], part)
        assert counts.max() - counts.min() <= 1, counts


def test_select_rows_on_a_class_sorted_file():
    train, test = sorted_labels(200), sorted_labels(100)
    tr, va, te = select_rows(train, test, limit_train=720, limit_test=32, val_size=40, seed=0)
    assert len(tr) == 680 and len(va) == 40 and len(te) == 32
    assert not set(tr) & set(va)
    for labels, rows in ((train, tr), (train, va), (test, te)):
        counts = shares(labels, rows)
        assert counts.min() >= 1 and counts.max() - counts.min() <= 1, counts
    tr, va, te = select_rows(train, test, limit_train=0, limit_test=0, val_size=0, seed=0)
    assert np.array_equal(tr, np.arange(2000)) and va is None and te is None


def test_open_dataset_reads_each_label_column_once_and_the_run_reads_no_other(tiny_data, monkeypatch):
    """The session's data path: `open_dataset` reads the manifest and each file's labels once; the loaders and
    the whitening init take its rows and read only images."""
    import data_prep
    from cifar_dist.dataset import open_dataset
    from cifar_dist.engine.session import build_loaders, init_from_data, make_accelerator
    from cifar_dist.models import build_model
    from cifar_dist.presets import resolve

    data_dir, name = tiny_data
    read, real = [], data_prep.read_labels
    monkeypatch.setattr(data_prep, "read_labels", lambda path: read.append(path.name) or real(path))
    cfg = resolve("fast", None, {"data.dir": str(data_dir), "data.name": name, "data.limit_train": 300,
                                 "data.val_size": 50, "data.limit_test": 100, "run.global_batch_size": 50,
                                 "model.widths": [8, 16, 16]})
    data = open_dataset(cfg.data)
    assert read == [f"{name}_train.beton", f"{name}_test.beton"]
    assert data.classes == [f"class{k}" for k in range(10)]  # the manifest's names
    tr, va, te = select_rows(real(data.train_path), real(data.test_path), 300, 100, 50, cfg.data.split_seed)
    assert np.array_equal(data.train_rows, tr) and np.array_equal(data.val_rows, va)
    assert np.array_equal(data.test_rows, te) and np.array_equal(data.test_subset(100), te)
    assert np.array_equal(data.test_subset(0), np.arange(200)) and len(data.test_subset(30)) == 30
    read.clear()
    acc, per_device = make_accelerator(cfg)
    loaders = build_loaders(cfg, data, acc, per_device)
    init_from_data(build_model(cfg.model, 10), data, n=100)
    assert read == []
    assert len(loaders.train) == 250 // 50 and len(loaders.val.labels) == 50 and len(loaders.test.labels) == 100
