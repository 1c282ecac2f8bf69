"""The two loaders over real .beton files: same pixels, aligned labels, exact coverage, disjoint shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cifar_dist.data import (
    Augment,
    FFCVLoader,
    Normalize,
    Order,
    Split,
    TensorLoader,
    beton_paths,
    cutout,
    random_crop,
    random_flip,
    read_images,
    train_val_split,
)

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@pytest.fixture(scope="module")
def arrays(tiny_data):
    d, name = tiny_data
    return {s: (np.load(d / f"{name}_{s}_images.npy"), np.load(d / f"{name}_{s}_labels.npy")) for s in ("train", "test")}


def collect(loader):
    xs, ys = [], []
    for x, y in loader:
        xs.append(x.clone())  # FFCV reuses its output buffers between batches
        ys.append(y.clone())
    return torch.cat(xs), torch.cat(ys)


def test_read_images_is_pixel_exact(tiny_data, arrays):
    train, test = beton_paths(*tiny_data)
    x, y = read_images(test)
    assert np.array_equal(x, arrays["test"][0]) and np.array_equal(y, arrays["test"][1])
    xs, ys = read_images(train, np.array([5, 3, 399]))
    assert np.array_equal(xs, arrays["train"][0][[5, 3, 399]]) and list(ys) == [5, 3, 9]


def test_both_loaders_give_the_same_normalised_tensors(tiny_data, arrays):
    _, test = beton_paths(*tiny_data)
    norm = Normalize(MEAN, STD, channels_last=True)
    x_ffcv, y_ffcv = collect(FFCVLoader(Split(test), batch_size=64, num_workers=1))
    x_np, y_np = arrays["test"]
    x_tensor, y_tensor = collect(TensorLoader(x_np, y_np, batch_size=64))
    a, b = norm(x_ffcv), norm(x_tensor)
    assert a.shape == (200, 3, 32, 32) and a.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a, b) and torch.equal(y_ffcv, y_tensor)
    # normalisation itself: pixel 0 of image 0, red channel
    assert a[0, 0, 0, 0].item() == pytest.approx((x_np[0, 0, 0, 0] / 255 - MEAN[0]) / STD[0], abs=1e-5)


def test_labels_stay_aligned_with_images_under_shuffling(tiny_data, arrays):
    train, _ = beton_paths(*tiny_data)
    x_np, y_np = arrays["train"]
    lookup = {img.tobytes(): int(lbl) for img, lbl in zip(x_np, y_np)}
    for loader in (TensorLoader(x_np, y_np, batch_size=32, order=Order(train=True, seed=4)),
                   FFCVLoader(Split(train), batch_size=32, num_workers=1, order=Order(train=True, seed=4))):
        loader.set_epoch(1)
        x, y = collect(loader)
        assert len(y) == 384  # 12 full batches of 32, ragged tail dropped
        for img, lbl in zip(x.permute(0, 2, 3, 1).contiguous().numpy(), y.tolist()):
            assert lookup[img.tobytes()] == lbl


@pytest.mark.parametrize("kind", ["tensor", "ffcv"])
def test_one_epoch_without_drop_last_visits_every_image_once(tiny_data, arrays, kind):
    train, _ = beton_paths(*tiny_data)
    x_np, y_np = arrays["train"]
    index = {img.tobytes(): i for i, img in enumerate(x_np)}
    if kind == "tensor":
        loader = TensorLoader(x_np, y_np, batch_size=48, order=Order(train=True, drop_last=False, seed=1))
    else:
        loader = FFCVLoader(Split(train), batch_size=48, num_workers=1, order=Order(train=True, drop_last=False, seed=1))
    x, _ = collect(loader)
    seen = sorted(index[img.tobytes()] for img in x.permute(0, 2, 3, 1).contiguous().numpy())
    assert seen == list(range(400))


def test_two_ranks_get_disjoint_shards_covering_the_split(arrays):
    x_np, y_np = arrays["test"]
    index = {img.tobytes(): i for i, img in enumerate(x_np)}
    shards = []
    for rank in (0, 1):
        x, _ = collect(TensorLoader(x_np, y_np, batch_size=30, order=Order(rank=rank, world_size=2)))
        shards.append({index[img.tobytes()] for img in x.permute(0, 2, 3, 1).contiguous().numpy()})
    assert not shards[0] & shards[1] and shards[0] | shards[1] == set(range(200))


def test_training_shards_split_each_global_batch(arrays):
    """Rank r's step-s batch is the r-th half of the single-process step-s batch (DDP == 1 process)."""
    x_np, y_np = arrays["train"]
    one = TensorLoader(x_np, y_np, batch_size=40, order=Order(train=True, seed=2))
    two = [TensorLoader(x_np, y_np, batch_size=20, order=Order(train=True, seed=2, rank=r, world_size=2)) for r in (0, 1)]
    for (xa, _), (x0, _), (x1, _) in zip(one, *two):
        assert torch.equal(xa, torch.cat([x0, x1]))
    assert len(one) == len(two[0]) == 10


def test_train_order_is_a_function_of_seed_and_epoch(arrays):
    x_np, y_np = arrays["train"]
    a = TensorLoader(x_np, y_np, batch_size=50, order=Order(train=True, seed=0), aug=Augment(crop_padding=4, flip=True, cutout_size=8))
    b = TensorLoader(x_np, y_np, batch_size=50, order=Order(train=True, seed=0), aug=Augment(crop_padding=4, flip=True, cutout_size=8))
    a.set_epoch(3)
    b.set_epoch(3)
    full = collect(a)[0]
    tail = collect(_From(b, 5))[0]
    assert torch.equal(full[250:], tail)  # resuming at step 5 reproduces the rest of the epoch exactly
    b.set_epoch(4)
    assert not torch.equal(collect(b)[0], full)


class _From:
    def __init__(self, loader, start):
        self.loader, self.start = loader, start

    def __iter__(self):
        return self.loader.iter_from(self.start)


def test_train_val_split_is_seeded_and_disjoint():
    labels = np.arange(100) % 10
    tr, va = train_val_split(labels, 10, seed=81)
    tr2, va2 = train_val_split(labels, 10, seed=81)
    assert np.array_equal(va, va2) and len(va) == 10 and len(tr) == 90
    assert not set(tr) & set(va) and set(tr) | set(va) == set(range(100))


def test_crop_flip_cutout_ops():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    same = random_crop(x, 0, g)
    assert same is x
    c = random_crop(x, 2, g)
    assert c.shape == x.shape
    # every crop is a shifted window of the zero-padded image
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        assert any(torch.equal(c[i], padded[i, :, oy:oy + 8, ox:ox + 8]) for oy in range(5) for ox in range(5))
    f = random_flip(x, torch.Generator().manual_seed(1))
    for i in range(2):
        assert torch.equal(f[i], x[i]) or torch.equal(f[i], x[i].flip(2))
    img = torch.full((64, 3, 32, 32), 200, dtype=torch.uint8)
    fill = torch.tensor([1, 2, 3], dtype=torch.uint8)
    out = cutout(img, 8, 1.0, fill, torch.Generator().manual_seed(2))
    holes = (out[:, 0] == 1).sum(dim=(1, 2))
    assert holes.max() == 64 and holes.min() >= 16  # 8x8 inside, at least a quarter when clipped at a corner
    assert torch.equal(out[:, 1][out[:, 0] == 1], torch.full_like(out[:, 1][out[:, 0] == 1], 2))
    assert torch.equal(cutout(img, 8, 0.0, fill, g), img)
