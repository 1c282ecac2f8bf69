"""A small, fast VGG-style net in the spirit of the airbench CIFAR-10 speedrun networks.

Our own take, not a copy: no fixed whitening layer, no lookahead/TTA machinery (those are training-side
choices). What is kept from that family: few wide 3×3 convs, max-pool downsampling early in each block
so most FLOPs run at low resolution, GELU, BatchNorm with frozen scale, a global *max* pool, and a
bias-free Linear head whose logits are multiplied by a small constant.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cifar_dist.models.registry import register_model


def _bn(c: int, momentum: float, learn_scale: bool) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c, momentum=momentum)
    # With a frozen scale, the following conv absorbs any per-channel gain; one fewer thing for
    # weight decay to fight over, as in the speedrun nets. The shift stays trainable.
    bn.weight.requires_grad_(learn_scale)
    return bn


class AirbenchBlock(nn.Module):
    """conv3×3 → MaxPool 2 → BN → GELU → conv3×3 → BN → GELU.

    Pooling straight after the first conv (rather than after its BN/GELU) runs BN, GELU and the second
    conv at a quarter of the pixels. Shapes: (B, cin, H, W) -> (B, cout, H/2, W/2).
    """

    def __init__(self, cin: int, cout: int, bn_momentum: float, learn_bn_scale: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.bn1 = _bn(cout, bn_momentum, learn_bn_scale)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _bn(cout, bn_momentum, learn_bn_scale)
        self.act2 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.pool(self.conv1(x))))
        return self.act2(self.bn2(self.conv2(x)))


class Airbench(nn.Module):
    """Stem conv 3×3 3→stem_width + BN + GELU; one AirbenchBlock per entry of ``widths`` (each halves
    H and W); global max pool; Linear (no bias) → × ``scale``.

    Shapes: (B, 3, H, W) -> (B, widths[-1], H/2^n, W/2^n) -> logits (B, num_classes). Any H, W >= 2^n.
    ``scale`` keeps initial logits small so the softmax starts near uniform without a special init.
    The defaults are the registered builder's (``airbench``).
    """

    def __init__(self, num_classes: int, widths: Sequence[int], stem_width: int, scale: float, bn_momentum: float,
                 learn_bn_scale: bool):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem_width, 3, 1, 1, bias=False),
            _bn(stem_width, bn_momentum, learn_bn_scale),
            nn.GELU(),
        )
        blocks, cin = [], stem_width
        for w in widths:
            blocks.append(AirbenchBlock(cin, int(w), bn_momentum, learn_bn_scale))
            cin = int(w)
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(cin, num_classes, bias=False)
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(x, 1)) * self.scale


@register_model(description="airbench-style speedrun net: conv stem + 3 conv-pool-conv blocks, GELU")
def airbench(
    num_classes: int = 10,
    widths: Sequence[int] = (64, 256, 256),
    stem_width: int = 24,
    scale: float = 1 / 9,
    bn_momentum: float = 0.4,
    learn_bn_scale: bool = False,
) -> nn.Module:
    """Fast small net for the ``fast`` preset; 1,972,000 trainable parameters by default.

    ``bn_momentum`` is PyTorch's (weight of the newest batch in the running stats); 0.4 rather than 0.1
    because the weights move a lot in a run of a few hundred steps and eval-mode statistics must keep up.
    ``learn_bn_scale=False`` freezes every BatchNorm weight at 1 (not counted as trainable).
    """
    return Airbench(num_classes, widths, stem_width, scale, bn_momentum, learn_bn_scale)
