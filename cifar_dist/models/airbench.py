"""A small, fast VGG-style net in the spirit of the airbench CIFAR-10 speedrun networks.

Our own implementation from the published description (Keller Jordan, "94% on CIFAR-10 in 3.29
seconds on a single GPU", arXiv 2404.00498): few wide 3×3 convs, max-pool downsampling early in each
block so most FLOPs run at low resolution, GELU, BatchNorm with frozen scale, a global *max* pool, and a
bias-free Linear head whose logits are multiplied by a small constant. Options turn on the paper's
initialisations:

- ``whiten=N``: the stem is a 2×2 convolution (no padding, 3 -> 2 x 12 channels) whose weights are set
  from the training data before training (`init_from_data`): the 12 eigenvectors of the covariance of
  2×2×3 patches, each scaled by 1/sqrt(eigenvalue + eps), and their negatives. Its weights stay frozen;
  its bias trains for the first N epochs (`frozen_after`; the engine stops it).
- ``bn_eps``: the paper uses 1e-12 with momentum 0.4 (PyTorch's convention).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cifar_dist.models.registry import register_model


def _bn(c: int, momentum: float, learn_scale: bool, eps: float = 1e-5) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c, momentum=momentum, eps=eps)
    # With a frozen scale, the following conv absorbs any per-channel gain; one fewer thing for
    # weight decay to fight over, as in the speedrun nets. The shift stays trainable.
    bn.weight.requires_grad_(learn_scale)
    return bn


class AirbenchBlock(nn.Module):
    """conv3×3 → MaxPool 2 → BN → GELU → conv3×3 → BN → GELU.

    Pooling straight after the first conv (rather than after its BN/GELU) runs BN, GELU and the second
    conv at a quarter of the pixels. Shapes: (B, cin, H, W) -> (B, cout, H/2, W/2).
    """

    def __init__(self, cin: int, cout: int, bn_momentum: float, learn_bn_scale: bool, bn_eps: float = 1e-5):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.bn1 = _bn(cout, bn_momentum, learn_bn_scale, bn_eps)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _bn(cout, bn_momentum, learn_bn_scale, bn_eps)
        self.act2 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.pool(self.conv1(x))))
        return self.act2(self.bn2(self.conv2(x)))


def patch_whitening(images: torch.Tensor, patch: int = 2, eps: float = 5e-4) -> torch.Tensor:
    """Conv weights (2*D, C, patch, patch), D = C*patch*patch, that whiten the images' patches.

    images: (N, C, H, W) float, already normalised as the network sees them. The second-moment matrix
    of all patch x patch patches is diagonalised; filter i is eigenvector i / sqrt(eigenvalue_i + eps)
    (largest eigenvalue first), followed by the same filters negated, so a GELU after it keeps both signs.
    """
    c = images.shape[1]
    cols = torch.nn.functional.unfold(images.double(), kernel_size=patch)  # (N, C*p*p, L), channel-major
    flat = cols.transpose(1, 2).reshape(-1, c * patch * patch)
    second_moment = flat.T @ flat / len(flat)
    eigenvalues, eigenvectors = torch.linalg.eigh(second_moment)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]).view(-1, c, patch, patch)
    return torch.cat([filters, -filters]).float()


@register_model(name="airbench", description="airbench-style speedrun net: conv stem + 3 conv-pool-conv blocks, GELU")
class Airbench(nn.Module):
    """Fast small net for the ``fast`` preset; 1,972,000 trainable parameters by default.

    Stem (conv 3×3 3→stem_width + BN + GELU, or with ``whiten`` a 2×2 whitening conv + GELU); one
    AirbenchBlock per entry of ``widths`` (each halves H and W); global max pool; Linear (no bias) → × ``scale``.
    Shapes: (B, 3, H, W) -> (B, widths[-1], H/2^n, W/2^n) -> logits (B, num_classes). Any H, W >= 2^n.
    ``scale`` keeps initial logits small so the softmax starts near uniform without a special init.

    ``bn_momentum`` is PyTorch's (weight of the newest batch in the running stats); 0.4 rather than 0.1
    because the weights move a lot in a run of a few hundred steps and eval-mode statistics must keep up.
    ``learn_bn_scale=False`` freezes every BatchNorm weight at 1 (not counted as trainable).
    ``whiten=N`` replaces the stem by the frozen 2×2 patch-whitening conv (``stem_width`` is then 24)
    whose bias trains for the first N epochs (None = the 3×3 conv stem).
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (64, 256, 256), stem_width: int = 24,
                 scale: float = 1 / 9, bn_momentum: float = 0.4, bn_eps: float = 1e-5, learn_bn_scale: bool = False,
                 whiten: int | None = None):
        super().__init__()
        self.whiten, self.whiten_bias_epochs = whiten is not None, whiten or 0
        if self.whiten:
            stem_width = 2 * 3 * 2 * 2  # the whitening filters and their negatives
            conv = nn.Conv2d(3, stem_width, 2, 1, 0, bias=True)
            conv.weight.requires_grad_(False)  # set by init_from_data, never trained
            nn.init.zeros_(conv.bias)
            self.stem = nn.Sequential(conv, nn.GELU())
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, stem_width, 3, 1, 1, bias=False),
                                      _bn(stem_width, bn_momentum, learn_bn_scale, bn_eps), nn.GELU())
        blocks, cin = [], stem_width
        for w in widths:
            blocks.append(AirbenchBlock(cin, int(w), bn_momentum, learn_bn_scale, bn_eps))
            cin = int(w)
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(cin, num_classes, bias=False)
        self.scale = float(scale)

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """Set the whitening stem from normalised training images (N, 3, H, W); no-op without ``whiten``."""
        if self.whiten:
            conv = self.stem[0]
            conv.weight.copy_(patch_whitening(images.to(conv.weight.device), conv.kernel_size[0]))

    def frozen_after(self) -> dict[str, int]:
        """Parameter name -> epoch from which it stops training (the whitening bias, if any)."""
        return {"stem.0.bias": self.whiten_bias_epochs} if self.whiten else {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(x, 1)) * self.scale
