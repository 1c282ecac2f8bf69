"""Seed 001: kuangliu-style CIFAR ResNet-18 with the seed's budget knobs (blocks, shortcut kernel, pool)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cifar_dist.models.layers import BasicBlock, conv_bn_relu, expect_spatial, make_stages
from cifar_dist.models.registry import register_model


class ResNetCIFAR(nn.Module):
    """Stem conv 3×3 s1 3→width + BN + ReLU (no max-pool); stage i has ``blocks[i]`` BasicBlocks at
    ``width·2^i`` channels, stride 2 on the first block of every stage but the first; then average
    pooling → Dropout → Linear(width·2^(n-1) → num_classes).

    Shapes: (B, 3, H, W) -> (B, width·2^(n-1), H/2^(n-1), W/2^(n-1)) -> logits (B, num_classes).

    Pooling: ``pool_size=None`` is a global average pool (any input size). An int is the seed's
    ``F.avg_pool2d(x, pool_size)``, whose output must be 1×1 because the Linear width does not depend on
    it (that is why the seed's budget notebook reports the same count for pool 2/4/8/16; only pool 4 runs
    at 32×32 with four stages). Any other combination raises ``ValueError`` in forward.
    The defaults are the registered builder's (``resnet18_cifar``). ``stem_width`` (default ``width``) and
    ``block_dropout`` (between the convs of every block) serve TPSNet; ``model_name`` is the model in error messages.
    """

    model_name = "resnet18_cifar"

    def __init__(self, num_classes: int, blocks: Sequence[int], width: int, shortcut_kernel: int,
                 pool_size: int | None, dropout: float, stem_width: int | None = None, block_dropout: float = 0.0):
        super().__init__()
        name = self.model_name
        blocks = tuple(int(b) for b in blocks)
        if not blocks or min(blocks) < 1:
            raise ValueError(f"{name}: blocks must be a non-empty list of positive ints, got {blocks}")
        if pool_size is not None and pool_size < 1:
            raise ValueError(f"{name}: pool_size must be a positive int or None, got {pool_size}")
        self.pool_size = pool_size
        stem_width = width if stem_width is None else stem_width
        self.stem = conv_bn_relu(3, stem_width)
        widths = [width * 2**i for i in range(len(blocks))]
        self.stages = make_stages(BasicBlock, stem_width, widths, blocks, shortcut_kernel=shortcut_kernel,
                                  dropout=block_dropout)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        if self.pool_size is None:
            x = F.adaptive_avg_pool2d(x, 1)
        else:
            x = F.avg_pool2d(x, self.pool_size)
            expect_spatial(
                x,
                (1, 1),
                f"resnet18_cifar avg-pool {self.pool_size}",
                "choose pool_size equal to the last feature map's side (4 at 32x32 with 4 stages) "
                "or pool_size=None for a global average",
            )
        return self.fc(self.dropout(torch.flatten(x, 1)))


@register_model(description="seed 001: kuangliu ResNet-18, budget knobs blocks/width/shortcut_kernel")
def resnet18_cifar(
    num_classes: int = 10,
    blocks: Sequence[int] = (2, 2, 2, 2),
    width: int = 64,
    shortcut_kernel: int = 1,
    pool_size: int | None = 4,
    dropout: float = 0.0,
) -> nn.Module:
    """Seed 001 ResNet; 11,173,962 parameters as standard ResNet-18, 4,903,242 with ``blocks=(1,1,1,1)``
    (the seed's final choice). ``width`` is the stem/stage-1 width, doubled at each later stage.
    """
    return ResNetCIFAR(num_classes, blocks, width, shortcut_kernel, pool_size, dropout)
