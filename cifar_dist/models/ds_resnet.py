"""Seed 004: OptimizedCIFAR10Net200K, a depthwise-separable residual net (20→160 channels)."""

from __future__ import annotations

import torch
from torch import nn

from cifar_dist.models.layers import PostActBlock, SeparableConv2d, conv_bn_relu, make_stages
from cifar_dist.models.registry import register_model


class EfficientBlock(PostActBlock):
    """Seed 004's PostActBlock: ReLU; each conv a sep-conv, DW 3×3 (no bias) then PW 1×1 (no bias) with
    nothing between them (as in the seed); projection conv 1×1 stride s (no bias) + BN."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(cin, cout, stride, (SeparableConv2d(cin, cout, stride), SeparableConv2d(cout, cout, 1)),
                         lambda: nn.ReLU(inplace=True),
                         lambda: nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))


@register_model(name="ds_resnet_200k",
                description="seed 004: OptimizedCIFAR10Net200K, depthwise-separable ResNet 20-160 ch")
class DSResNet200K(nn.Module):
    """Seed 004 network, 150,690 parameters at num_classes=10. Stem conv 3×3 3→20 + BN + ReLU; four stages
    of two EfficientBlocks at 20/40/80/160 channels (stride 2 on the first block of stages 2-4); global
    average pool → Dropout → Linear 160→num_classes (``dropout`` sits before it).

    Shapes: (B, 3, H, W) -> (B, 160, H/8, W/8) -> logits (B, num_classes); any H, W works (global pool).
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.2):
        super().__init__()
        widths = (20, 40, 80, 160)
        self.stem = conv_bn_relu(3, widths[0])
        self.stages = make_stages(EfficientBlock, widths[0], widths, [2] * len(widths))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(widths[-1], num_classes)
        # The seed's init, kept because the recipe (lr 0.05, warm-up) was tuned with it: Kaiming-normal
        # fan_out/relu for convs *and* the Linear head, biases to zero; BN to the identity is PyTorch's own.
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        x = torch.flatten(self.pool(x), 1)
        return self.fc(self.dropout(x))
