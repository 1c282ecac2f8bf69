"""The two loaders over real .beton files: same pixels, aligned labels, exact coverage, disjoint shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cifar_dist.augment import crop_flip, cutout
from cifar_dist.config import AugConfig
from cifar_dist.data import (
    FFCVLoader,
    Normalize,
    Order,
    Split,
    TensorLoader,
    beton_paths,
    read_images,
)
from cifar_dist.dataset import train_val_split

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
    a = TensorLoader(x_np, y_np, batch_size=50, order=Order(train=True, seed=0), aug=AugConfig(crop_padding=4, flip=True, cutout=8))
    b = TensorLoader(x_np, y_np, batch_size=50, order=Order(train=True, seed=0), aug=AugConfig(crop_padding=4, flip=True, cutout=8))
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
    assert torch.equal(crop_flip(x, 0, False, g), x)  # no padding, no flip: the images as they are
    c = crop_flip(x, 2, False, g)
    assert c.shape == x.shape
    # every crop is a shifted window of the zero-padded image
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        assert any(torch.equal(c[i], padded[i, :, oy:oy + 8, ox:ox + 8]) for oy in range(5) for ox in range(5))
    f = crop_flip(x, 0, True, torch.Generator().manual_seed(1))
    for i in range(2):
        assert torch.equal(f[i], x[i]) or torch.equal(f[i], x[i].flip(2))
    img = torch.full((64, 3, 32, 32), 200, dtype=torch.uint8)
    fill = torch.tensor([1, 2, 3], dtype=torch.uint8)
    out = cutout(img, 8, 1.0, fill, torch.Generator().manual_seed(2))
    holes = (out[:, 0] == 1).sum(dim=(1, 2))
    assert holes.max() == 64 and holes.min() >= 16  # 8x8 inside, at least a quarter when clipped at a corner
    assert torch.equal(out[:, 1][out[:, 0] == 1], torch.full_like(out[:, 1][out[:, 0] == 1], 2))
    assert torch.equal(cutout(img, 8, 0.0, fill, g), img)


@pytest.mark.parametrize(("aug", "fill"), [
    (AugConfig(crop_padding=2, crop_pad="reflect", flip=True, flip_mode="alternating"), (0, 0, 0)),  # `fast`'s
    (AugConfig(crop_padding=4, flip=True, cutout=8, cutout_prob=0.5), (125, 123, 114)),
], ids=["reflect_alternating", "zeros_random_cutout"])
@pytest.mark.slow
def test_ffcv_and_tensor_loaders_give_the_same_images_the_same_augmentation(tiny_data, arrays, aug, fill):
    """FFCV's batches (which images: read from an unaugmented FFCV loader with the same order, matched by their
    pixels) come out exactly as the tensor loader's augmentation makes them, epoch after epoch, on a sub-split
    (positions in the split, not rows of the file, key the alternating flips)."""
    train, _ = beton_paths(*tiny_data)
    x_np, y_np = arrays["train"]
    rows = np.sort(np.random.default_rng(0).choice(len(y_np), 240, replace=False))
    position = {img.tobytes(): i for i, img in enumerate(x_np[rows])}
    assert len(position) == len(rows)  # every image is unique: pixels identify it
    order = Order(train=True, seed=3)
    tensor = TensorLoader(x_np[rows], y_np[rows], batch_size=32, order=order, aug=aug, cutout_fill=fill)
    ffcv = FFCVLoader(Split(train, rows), batch_size=32, num_workers=1, order=order, aug=aug, cutout_fill=fill)
    plain = FFCVLoader(Split(train, rows), batch_size=32, num_workers=1, order=order)
    for epoch in (0, 1, 2):
        ffcv.set_epoch(epoch)
        plain.set_epoch(epoch)
        n = 0
        for step, ((x, y), (raw, y_raw)) in enumerate(zip(ffcv, plain)):
            pos = torch.tensor([position[img.tobytes()] for img in raw.permute(0, 2, 3, 1).contiguous().numpy()])
            assert torch.equal(y, y_raw) and torch.equal(y, torch.as_tensor(y_np[rows])[pos])
            expected = tensor.augment(raw, pos, epoch, step)
            assert torch.equal(x, expected), f"epoch {epoch} step {step}: FFCV's batch is not the tensor loader's"
            assert not torch.equal(x, raw)  # it was augmented
            n += len(y)
        assert n == len(ffcv) * 32 == 224


def test_alternating_flips_mirror_each_image_every_other_epoch_on_the_ffcv_loader(tiny_data, arrays):
    """Without crops, each image comes out of epoch 1 as the mirror of what it was in epoch 0, and about half the
    images are flipped in each epoch (a check on pixels, independent of the shared code)."""
    train, _ = beton_paths(*tiny_data)
    x_np, _ = arrays["train"]
    original = {img.tobytes(): i for i, img in enumerate(x_np)}
    mirrored = {img[:, ::-1].tobytes(): i for i, img in enumerate(x_np)}
    loader = FFCVLoader(Split(train), batch_size=50, num_workers=1, order=Order(train=True, seed=5),
                        aug=AugConfig(crop_padding=0, flip=True, flip_mode="alternating"))
    flipped = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        now = {}
        for x, _ in loader:
            for img in x.permute(0, 2, 3, 1).contiguous().numpy():
                b = img.tobytes()
                assert (b in original) != (b in mirrored)
                now[original.get(b, mirrored.get(b))] = b in mirrored
        flipped.append(now)
    assert flipped[0].keys() == flipped[1].keys() and len(flipped[0]) == 400
    assert all(flipped[0][i] != flipped[1][i] for i in flipped[0])
    assert 150 < sum(flipped[0].values()) < 250


@pytest.mark.slow
def test_fast_preset_trains_on_the_ffcv_loader(tiny_data, tmp_path):
    """`--preset=fast --data.loader=ffcv` is the same recipe (reflect crop, alternating flip), not a refusal: a
    tiny cut trains to the end on the CPU."""
    from cifar_dist.engine.loop import train
    from cifar_dist.presets import resolve
    from tests.helpers import read_json

    data_dir, name = tiny_data
    cfg = resolve("fast", None, {"data.loader": "ffcv", "data.dir": str(data_dir), "data.name": name,
                                 "data.num_workers": 1, "data.limit_test": 100, "run.epochs": 2,
                                 "run.global_batch_size": 100, "run.eval_batch_size": 100, "model.widths": [8, 16, 16],
                                 "run.out_dir": str(tmp_path), "run.name": "fast_ffcv", "run.progress": False})
    assert (cfg.aug.crop_pad, cfg.aug.flip_mode) == ("reflect", "alternating")
    assert train(cfg) == 0
    result = read_json(tmp_path / "fast_ffcv" / "result.json")
    assert result["status"] == "finished" and result["epochs"] == 2
    assert 0.0 <= result["final"]["test_acc_tta"] <= 100.0
    # the timings a GPU run reports: training seconds (device synchronised) and launch to the first step
    assert 0 < result["train_s"] <= result["wall_s"] and result["first_step_s"] > 0  # (launch: this process's start)
