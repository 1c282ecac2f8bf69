"""Seed 002: TPSNet, a 3-stage CIFAR ResNet (depth 6n+4) with width multiplier k (taiyipan/TPSNet)."""

from __future__ import annotations

from collections.abc import Sequence

from cifar_dist.models.registry import register_model
from cifar_dist.models.resnet_cifar import ResNetCIFAR


@register_model(name="tpsnet", description="seed 002: TPSNet, 3-stage ResNet-82 (k=2), widths 32/64/128")
class TPSNet(ResNetCIFAR):
    """Seed 002 TPSNet, 4,959,770 parameters by default. Stem conv 3×3 s1 3→c1 + BN + ReLU; stage i has
    ``blocks[i]`` BasicBlocks at ``k·c1·2^i`` channels (stride 2 on the first block of stages after the
    first; the first block of stage 1 is a stride-1 1×1 projection because k·c1 ≠ c1); global average
    pool → Dropout → Linear.

    Shapes: (B, 3, H, W) -> (B, k·c1·2^(n-1), H/2^(n-1), W/2^(n-1)) -> logits (B, num_classes).
    The seed used a fixed avg-pool 8 at 32×32; the global average pool is identical there and also
    works at other input sizes. A ResNetCIFAR with a stem narrower than its first stage and 1×1 shortcuts.
    ``dropout`` is before the Linear head (the tuning script's net_p); ``block_dropout`` is between the two
    convs of every block (its block_p; commented out in the released model, hence off by default).
    """

    model_name = "tpsnet"

    def __init__(self, num_classes: int = 10, blocks: Sequence[int] = (13, 13, 13), c1: int = 16, k: int = 2,
                 dropout: float = 0.0, block_dropout: float = 0.0):
        super().__init__(num_classes, blocks, k * c1, 1, None, dropout, stem_width=c1,
                         block_dropout=block_dropout)
