"""Seed 000: "SoheilNet", a depthwise-separable ResNet-18-like net run on CIFAR upsampled to 320×320."""

from __future__ import annotations

import torch
from torch import nn

from cifar_dist.models.layers import PostActBlock, SeparableConv2d, expect_spatial, make_stages
from cifar_dist.models.registry import register_model


class ResidualBlock(PostActBlock):
    """Seed 000's PostActBlock: ReLU6; sep-convs DW 3×3 *with* bias (PyTorch default, kept as in the seed)
    then PW 1×1 without bias; projection DW 1×1 stride s with bias (a strided per-channel scale+shift), then
    PW Cin→Cout and BN."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(
            cin, cout, stride,
            (SeparableConv2d(cin, cout, stride, dw_bias=True), SeparableConv2d(cout, cout, 1, dw_bias=True)),
            lambda: nn.ReLU6(inplace=True),
            lambda: nn.Sequential(SeparableConv2d(cin, cout, stride, kernel_size=1, dw_bias=True), nn.BatchNorm2d(cout)),
        )


@register_model(name="soheilnet", input_size=320,
                description="seed 000: SoheilNet, depthwise-separable ResNet-18-like @320px")
class SoheilNet(nn.Module):
    """Seed 000 network, 387,712 parameters at num_classes=10, specified at 320×320 input.

    Stem DW 7×7 s2 (bias) → PW 3→32 → BN → ReLU6 → MaxPool 3 s2; four stages of two ResidualBlocks at
    32/64/128/256 channels (stride 2 on the first block of stages 2-4); AvgPool 10 → Linear 256→64 →
    Dropout → Linear 64→num_classes (no nonlinearity between the Linears, as in the seed).

    Shapes: (B, 3, 320, 320) -> (B, 256, 10, 10) -> logits (B, num_classes). The fixed AvgPool(10) needs a
    10×10 final map (inputs of 289-320 pixels); ``adaptive_pool=True`` swaps in a global average pool so any
    input size works (same parameter count).
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.2, adaptive_pool: bool = False):
        super().__init__()
        self.stem = nn.Sequential(
            SeparableConv2d(3, 32, 2, kernel_size=7, dw_bias=True),
            nn.BatchNorm2d(32),
            nn.ReLU6(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        self.stages = make_stages(ResidualBlock, 32, (32, 64, 128, 256), (2, 2, 2, 2))
        self.adaptive_pool = adaptive_pool
        self.pool = nn.AdaptiveAvgPool2d(1) if adaptive_pool else nn.AvgPool2d(10, stride=1)
        self.head = nn.Sequential(nn.Linear(256, 64), nn.Dropout(dropout), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        if not self.adaptive_pool:
            # Checked before the pool: a smaller map makes AvgPool2d fail with an opaque message and a
            # larger one would reach the Linear as a 256·n² vector.
            expect_spatial(
                x,
                (10, 10),
                "soheilnet before AvgPool2d(10)",
                "the seed's fixed pool needs a 320x320 input; pass adaptive_pool=True for other sizes",
            )
        return self.head(torch.flatten(self.pool(x), 1))
