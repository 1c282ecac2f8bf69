"""Batch augmentations on the device, batch mixing (MixUp / CutMix / RICAP) and test-time augmentation.

Order of a training batch (see `DeviceAugment`, then `TrainTransform`):
    uint8 (B,3,32,32) read by a loader -> crop / flip / cutout, seeded per (seed, epoch, step, rank), applied
       by the loader itself (`DeviceAugment`: the same draws whichever loader, and on resume)
    -> AutoAugment, CIFAR10 policy, per image (torchvision v2, uint8)
    -> float in [0, 255]: random affine (shift / scale / rotate), brightness / contrast,
       hue / saturation / value, coarse dropout -- each with per-image parameters, one batched op
    -> normalise (and resize, and channels_last)            [cifar_dist.data.Normalize]
    -> mixing: per batch, RICAP or MixUp or CutMix or nothing -> soft targets
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from cifar_dist.config import AugConfig, ConfigError, LossConfig

NO_AUG = AugConfig(crop_padding=0, flip=False)  # the loaders' default: no crop, flip or cutout


def batch_generator(seed: int, epoch: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """A generator seeded by (seed, epoch, step, rank): augmentation draws do not depend on history."""
    mixed = (seed * 1_000_003 + epoch * 10_007 + step * 101 + rank) % (2**63 - 1)
    g = torch.Generator(device=device)
    g.manual_seed(mixed)
    return g


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Mirror indices that fall outside [0, n) back inside (edge pixel not repeated)."""
    i = i.abs()
    return torch.where(i >= n, 2 * (n - 1) - i, i)


def crop_flip(x: torch.Tensor, padding: int, flip: bool | torch.Tensor, g: torch.Generator,
              pad_mode: str = "zeros") -> torch.Tensor:
    """Per image: a random crop of the padded image (shift up to `padding` px) and a left-right flip.
    x: (B, C, H, W), any dtype; returns the same shape.

    `flip`: True = each image flipped with probability 0.5, a (B,) bool tensor = exactly those images.
    `pad_mode`: "zeros" pads with 0, "reflect" mirrors the image at its border.
    Both are one `gather` on the flattened images: each output pixel reads the input pixel its
    (shift, flip) maps it to. One pass over the batch, no per-image Python, no host sync.
    """
    b, c, h, w = x.shape
    p = max(padding, 0)
    dev = x.device
    oy = torch.randint(0, 2 * p + 1, (b,), device=dev, generator=g) - p
    ox = torch.randint(0, 2 * p + 1, (b,), device=dev, generator=g) - p
    cols = torch.arange(w, device=dev).expand(b, w)
    if isinstance(flip, torch.Tensor) or flip:
        flipped = flip if isinstance(flip, torch.Tensor) else torch.rand(b, device=dev, generator=g) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)  # (B, W)
    rows = torch.arange(h, device=dev)[None, :, None] + oy[:, None, None]  # (B, H, 1)
    cols = cols[:, None, :] + ox[:, None, None]  # (B, 1, W)
    if pad_mode == "reflect":
        src, width = x.reshape(b, c, -1), w
        rows, cols = _reflect(rows, h), _reflect(cols, w)
    else:  # zeros: read from the zero-padded image
        src, width = F.pad(x, (p, p, p, p)).reshape(b, c, -1), w + 2 * p
        rows, cols = rows + p, cols + p
    index = rows * width + cols  # (B, H, W)
    return torch.gather(src, 2, index.reshape(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)


def squares(h: int, w: int, y0: torch.Tensor, x0: torch.Tensor, side: int | torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: the pixels of each image's square with top-left corner (y0, x0) ((B,) each) and side
    `side` px (one for all, or (B,)), clipped at the borders. The one hole shape of `cutout` and
    `coarse_dropout`, which differ only in where they put it and how many."""
    ys, xs = torch.arange(h, device=y0.device)[None], torch.arange(w, device=y0.device)[None]
    in_y = (ys >= y0[:, None]) & (ys < (y0 + side)[:, None])
    in_x = (xs >= x0[:, None]) & (xs < (x0 + side)[:, None])
    return in_y[:, :, None] & in_x[:, None, :]


def cutout(x: torch.Tensor, size: int, prob: float, fill: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Fill one size x size square per image with `fill` (C,), centred anywhere, clipped at borders."""
    if size <= 0 or prob <= 0:
        return x
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b,), device=x.device, generator=g)
    cx = torch.randint(0, w, (b,), device=x.device, generator=g)
    on = torch.rand(b, device=x.device, generator=g) < prob
    mask = (squares(h, w, cy - size // 2, cx - size // 2, size) & on[:, None, None])[:, None]
    return torch.where(mask, fill.view(1, -1, 1, 1).to(x.dtype), x)


class DeviceAugment:
    """The training augmentation of both loaders, on the device, on uint8 (B, C, H, W) batches: a crop of the
    padded image (shift up to `crop_padding` px; zeros or reflect), a left-right flip (random, or alternating:
    one random flip per image drawn once from the seed, mirrored every other epoch, so each image is seen
    both ways in every pair of epochs), then cutout. The draws of a batch are a pure function of (seed, epoch,
    step, rank) and, for alternating flips, of each image's position in the split (`rows`): the tensor loader
    and the FFCV loader give the same images the same augmentation, and a resumed epoch is bit-exact.
    """

    def __init__(self, aug: AugConfig, cutout_fill: tuple[int, ...], n: int, seed: int, rank: int,
                 device: torch.device):
        """`cutout_fill`: the uint8 colour of the cutout square; `n`: images in the split (alternating flips are
        drawn for each)."""
        self.aug, self.seed, self.rank, self.device = aug, seed, rank, torch.device(device)
        self.base_flips = None
        if aug.flip and aug.flip_mode == "alternating":
            g = torch.Generator().manual_seed(seed * 7919 + 104_729)
            self.base_flips = (torch.rand(n, generator=g) < 0.5).to(self.device)
        self.cutout_fill = torch.tensor(cutout_fill, dtype=torch.uint8, device=self.device)

    @property
    def needs_rows(self) -> bool:
        """Whether `__call__` reads `rows` (alternating flips)."""
        return self.base_flips is not None

    def __call__(self, x: torch.Tensor, rows: torch.Tensor | None, epoch: int, step: int) -> torch.Tensor:
        """x: uint8 (B, C, H, W) on the device; rows: (B,) positions of its images in the split, on the device."""
        a = self.aug
        if not (a.crop_padding or a.flip or a.cutout):
            return x
        g = batch_generator(self.seed, epoch, step, self.rank, x.device)
        if a.crop_padding or a.flip:
            flip = a.flip if self.base_flips is None else self.base_flips[rows] ^ bool(epoch % 2)
            x = crop_flip(x, a.crop_padding, flip, g, a.crop_pad)
        if a.cutout:
            x = cutout(x, a.cutout, a.cutout_prob, self.cutout_fill, g)
        return x


def _uniform(n: int, lo: float, hi: float, device) -> torch.Tensor:
    return torch.rand(n, device=device) * (hi - lo) + lo


def random_affine(x: torch.Tensor, prob: float, max_shift: float, max_scale: float, max_deg: float,
                  mode: str = "bilinear") -> torch.Tensor:
    """Per-image random shift (fraction of side), scale (1 +- max_scale) and rotation (+- max_deg).

    x: float (B, C, H, W). Images outside `prob` keep the identity transform; the border is zeros.
    """
    b = x.shape[0]
    on = torch.rand(b, device=x.device) < prob
    ang = _uniform(b, -max_deg, max_deg, x.device) * math.pi / 180
    scale = 1 + _uniform(b, -max_scale, max_scale, x.device)
    tx, ty = (_uniform(b, -max_shift, max_shift, x.device) * 2 for _ in range(2))
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    ident = torch.eye(2, 3, device=x.device, dtype=theta.dtype).expand(b, 2, 3)  # a fill kernel, no host copy
    theta = torch.where(on[:, None, None], theta, ident)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def brightness_contrast(x: torch.Tensor, prob: float, brightness: float, contrast: float) -> torch.Tensor:
    """x float in [0, 255]: x * (1 + c) + b * 255 per image, clamped (albumentations' by-max rule)."""
    b = x.shape[0]
    on = (torch.rand(b, device=x.device) < prob).float()[:, None, None, None]
    fc = 1 + _uniform(b, -contrast, contrast, x.device)[:, None, None, None] * on
    shift = _uniform(b, -brightness, brightness, x.device)[:, None, None, None] * on * 255
    return (x * fc + shift).clamp(0, 255)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> HSV in [0, 1] (hue as a fraction of the colour wheel)."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = torch.where(delta > 0, (h / 6) % 1.0, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([h, s, maxc], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_hsv`."""
    h, s, v = x.unbind(1)
    k = torch.stack([(n + h * 6) % 6 for n in (5.0, 3.0, 1.0)], 1)  # one phase per output channel
    return v[:, None] - (v * s)[:, None] * (torch.minimum(k, 4 - k).clamp(0, 1))


def hsv_jitter(x: torch.Tensor, prob: float, hue: float, saturation: float, value: float) -> torch.Tensor:
    """x float in [0, 255]: per image, add a hue shift (fraction of the wheel, +-hue) and saturation and
    value shifts (+-saturation, +-value on a [0, 1] scale), as albumentations' HueSaturationValue adds
    its shifts. One batched pass, no per-image loop."""
    b = x.shape[0]
    on = (torch.rand(b, device=x.device) < prob).float()[:, None, None]
    hsv = rgb_to_hsv(x / 255)
    dh, ds, dv = (_uniform(b, -m, m, x.device)[:, None, None] * on for m in (hue, saturation, value))
    hsv = torch.stack([(hsv[:, 0] + dh) % 1.0, (hsv[:, 1] + ds).clamp(0, 1), (hsv[:, 2] + dv).clamp(0, 1)], 1)
    return hsv_to_rgb(hsv) * 255


def coarse_dropout(x: torch.Tensor, prob: float, holes: tuple[int, ...], size: tuple[int, ...]) -> torch.Tensor:
    """Zero `holes[0]..holes[1]` squares of side `size[0]..size[1]` px, fully inside the image."""
    b, _, h, w = x.shape
    on = torch.rand(b, device=x.device) < prob
    n_holes = torch.randint(holes[0], holes[1] + 1, (b,), device=x.device)
    keep = torch.ones(b, 1, h, w, device=x.device)
    for k in range(holes[1]):
        side = torch.randint(size[0], size[1] + 1, (b,), device=x.device)
        y0 = (torch.rand(b, device=x.device) * (h - side + 1)).long()
        x0 = (torch.rand(b, device=x.device) * (w - side + 1)).long()
        hole = squares(h, w, y0, x0, side) & (on & (k < n_holes))[:, None, None]
        keep = keep * (~hole).float()[:, None]
    return x * keep


class TrainTransform(torch.nn.Module):
    """The on-device part of training augmentation: uint8 batch in, normalised float batch out."""

    def __init__(self, aug: AugConfig, normalize: torch.nn.Module):
        super().__init__()
        self.aug, self.normalize = aug, normalize
        self.autoaugment = None
        if aug.autoaugment:
            from torchvision.transforms import v2

            self.autoaugment = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.aug
        if self.autoaugment is not None:
            # One policy draw per image (a v2 transform on a batch would apply one draw to all).
            x = torch.stack([self.autoaugment(img) for img in x])
        x = x.float()
        if a.rotation:
            x = random_affine(x, 1.0, 0.0, 0.0, a.rotation, mode="nearest")
        if a.affine_prob:
            x = random_affine(x, a.affine_prob, a.affine_shift, a.affine_scale, a.affine_rotate)
        if a.color_prob:
            x = brightness_contrast(x, a.color_prob, a.brightness, a.contrast)
        if a.hsv_prob:
            x = hsv_jitter(x, a.hsv_prob, a.hue, a.saturation, a.value)
        if a.dropout_prob:
            x = coarse_dropout(x, a.dropout_prob, a.dropout_holes, a.dropout_size)
        return self.normalize(x)


def smooth_one_hot(y: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """(B,) int -> (B, K) targets with `smoothing` spread evenly over all K classes."""
    off = smoothing / num_classes
    return torch.full((y.shape[0], num_classes), off, device=y.device).scatter_(1, y[:, None], 1 - smoothing + off)


def ricap(x: torch.Tensor, y: torch.Tensor, beta: float, num_classes: int, smoothing: float):
    """RICAP (Takahashi et al.): tile crops of 4 shuffled copies of the batch into each image.

    x: (B, C, H, W) float, y: (B,) int. Returns mixed images and (B, K) soft targets in which each
    source's label weighs its area fraction; the four weights sum to 1, so a RICAP batch carries the
    same loss scale as a clean one.
    """
    b, _, h, w = x.shape
    # box sizes and corners are host numbers (numpy's RNG, as timm's Mixup draws its lambda): no tensor per batch
    cw = int(round(w * float(np.random.beta(beta, beta))))
    ch = int(round(h * float(np.random.beta(beta, beta))))
    widths, heights = [cw, w - cw, cw, w - cw], [ch, ch, h - ch, h - ch]
    out = torch.empty_like(x)
    target = torch.zeros(b, num_classes, device=x.device)
    corners = [(0, 0), (0, cw), (ch, 0), (ch, cw)]
    for k in range(4):
        kw_, kh = widths[k], heights[k]
        if kw_ == 0 or kh == 0:
            continue
        perm = torch.randperm(b, device=x.device)
        x0 = int(np.random.randint(0, w - kw_ + 1))
        y0 = int(np.random.randint(0, h - kh + 1))
        oy, ox = corners[k]
        out[:, :, oy : oy + kh, ox : ox + kw_] = x[perm, :, y0 : y0 + kh, x0 : x0 + kw_]
        target += (kw_ * kh) / (w * h) * smooth_one_hot(y[perm], num_classes, smoothing)
    return out, target


class BatchMixer:
    """Per batch, one uniform draw picks RICAP, MixUp, CutMix or nothing (seed 004's scheme).

    MixUp and CutMix come from timm's `Mixup` (batch mode, CutMix lambda corrected for clipping);
    RICAP is `ricap` above. Returns (images, soft targets (B, K)); label smoothing is folded into
    the targets, so the loss is timm's SoftTargetCrossEntropy in every case.
    """

    def __init__(self, loss: LossConfig, num_classes: int):
        self.cfg, self.num_classes = loss, num_classes
        mix_total = loss.mixup_prob + loss.cutmix_prob
        if loss.ricap_prob + mix_total > 1 + 1e-9:
            raise ConfigError(
                f"--loss.ricap_prob + mixup_prob + cutmix_prob: expected a sum <= 1, found "
                f"{loss.ricap_prob + mix_total:g}"
            )
        for prob, alpha, name in ((loss.mixup_prob, loss.mixup_alpha, "mixup"), (loss.cutmix_prob, loss.cutmix_alpha, "cutmix")):
            if prob > 0 and alpha <= 0:
                raise ConfigError(f"--loss.{name}_alpha: expected > 0 when {name}_prob > 0, found {alpha}")
        self.mixup = None
        if mix_total > 0:
            from timm.data import Mixup  # timm only where used (its import costs ~2 s of start-up)

            self.mixup = Mixup(
                mixup_alpha=loss.mixup_alpha if loss.mixup_prob > 0 else 0.0,
                cutmix_alpha=loss.cutmix_alpha if loss.cutmix_prob > 0 else 0.0,
                prob=1.0,
                switch_prob=loss.cutmix_prob / mix_total if loss.mixup_prob > 0 and loss.cutmix_prob > 0 else 0.5,
                mode="batch",
                label_smoothing=loss.label_smoothing,
                num_classes=num_classes,
            )

    @property
    def active(self) -> bool:
        return self.cfg.ricap_prob > 0 or self.mixup is not None

    def criterion(self) -> torch.nn.Module:
        """The training loss for this mixer's targets.

        Mixing on: soft targets, timm's SoftTargetCrossEntropy. Off: hard labels, with timm's
        LabelSmoothingCrossEntropy when label smoothing is set, else plain cross-entropy.
        """
        if not (self.active or self.cfg.label_smoothing):
            return torch.nn.CrossEntropyLoss()  # (importing timm costs ~2 s of start-up: only where used)
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        if self.active:
            return SoftTargetCrossEntropy()
        return LabelSmoothingCrossEntropy(self.cfg.label_smoothing)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cfg
        r = float(np.random.random())  # a host draw (numpy's RNG, like timm's Mixup): no tensor read per batch
        if r < c.ricap_prob:
            return ricap(x, y, c.ricap_beta, self.num_classes, c.label_smoothing)
        if self.mixup is not None and r < c.ricap_prob + c.mixup_prob + c.cutmix_prob:
            if x.shape[0] % 2:
                raise ValueError(f"MixUp/CutMix need an even batch per process, found {x.shape[0]}")
            return self.mixup(x, y)
        return x, smooth_one_hot(y, self.num_classes, c.label_smoothing)


def tta_views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """Views of a normalised batch for test-time augmentation (weights: `tta_weights`).

    none: [x]; flip: [x, flipped x]; flip_translate: x and its flip, each also shifted by one pixel
    in the four directions (zero fill = the mean colour after normalisation): 10 views.
    flip_diag (the airbench recipe's): x and its flip, then both shifted one pixel up-left and one pixel
    down-right with reflected edges: 6 views, whose logits (not probabilities) are averaged.
    """
    if mode == "none":
        return [x]
    views = [x, x.flip(3)]
    h, w = x.shape[-2:]
    if mode == "flip_translate":
        shifted = []
        for v in views:
            p = F.pad(v, (1, 1, 1, 1))
            for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
                shifted.append(p[..., dy : dy + h, dx : dx + w])
        views += shifted
    elif mode == "flip_diag":
        p = F.pad(x, (1, 1, 1, 1), mode="reflect")
        for d in (0, 2):
            views += [p[..., d : d + h, d : d + w], p[..., d : d + h, d : d + w].flip(3)]
    return views


def tta_weights(mode: str, n: int) -> list[float]:
    """Weight of each of `tta_views`' n views: flip_diag gives the unshifted pair half of the total, each
    shifted pair a quarter; every other mode weighs its views equally."""
    if mode == "flip_diag":
        return [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    return [1.0 / n] * n


TTA_ON_LOGITS = ("flip_diag",)  # modes whose views' logits are averaged (the others average probabilities)
