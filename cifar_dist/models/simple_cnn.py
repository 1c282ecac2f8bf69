"""Seed 003: three 2×2 conv blocks and a three-layer MLP (AxekA13/CNN-for-CIFAR-10 README model)."""

from __future__ import annotations

import torch
from torch import nn

from cifar_dist.models.layers import expect_spatial
from cifar_dist.models.registry import register_model


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    # Kernel 2 with padding 1 grows the map by one pixel (32 -> 33) before the pool halves it; that is
    # what makes the seed's flatten exactly 128·4·4 = 2048 at 32×32.
    return nn.Sequential(
        nn.Conv2d(cin, cout, 2, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2)
    )


@register_model(name="simple_cnn", description="seed 003: 3 conv (2x2) + 3-layer MLP")
class SimpleCNN(nn.Module):
    """Seed 003 CNN, 600,746 parameters at num_classes=10: conv(3→32)→conv(32→64)→conv(64→128), each 2×2 p1
    + BN + ReLU + MaxPool 2; then Linear 2048→256 → ReLU → Linear 256→128 → ReLU → Linear 128→num_classes.

    Shapes: (B, 3, 32, 32) -> features (B, 128, 4, 4) -> logits (B, num_classes). The flatten fixes the
    input at 31 or 32 pixels. The seed's printout lists no activations between the Linear layers; the
    ReLUs follow the sibling script's head (the most plausible reading) and add no parameters.
    ``dropout`` (after each hidden ReLU) is not in the seed and defaults to off.
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        self.features = nn.Sequential(_conv_block(3, 32), _conv_block(32, 64), _conv_block(64, 128))
        self.head = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(128 * 4 * 4, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(256, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        expect_spatial(x, (4, 4), "simple_cnn", "its Linear(2048, 256) head needs a 32x32 input")
        return self.head(x)
