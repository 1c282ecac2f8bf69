"""Building blocks shared by several families (kept here so a fix lands in every family at once)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


def expect_spatial(x: torch.Tensor, size: tuple[int, int], where: str, hint: str) -> None:
    """Raise ``ValueError`` unless ``x`` (B, C, H, W) has spatial size ``size``.

    Used before a layer whose input width is fixed at construction (a flatten into a Linear, or a fixed
    pool that must reduce to 1x1), so a wrong input size fails with an actionable message instead of a
    matmul shape error. It only reads the shape, so ``torch.compile`` turns it into a shape guard.
    """
    if tuple(x.shape[-2:]) != size:
        raise ValueError(
            f"{where}: expected a {size[0]}x{size[1]} feature map here, got "
            f"{x.shape[-2]}x{x.shape[-1]}; {hint}"
        )


class SeparableConv2d(nn.Sequential):
    """Depthwise k×k (stride ``stride``, 'same' padding) then pointwise 1×1, no norm/act in between.

    Shapes: (B, Cin, H, W) -> (B, Cout, ceil(H/stride), ceil(W/stride)) for odd ``kernel_size``.
    ``dw_bias`` exists because seed 000 kept PyTorch's default bias on the depthwise conv and seed 004
    did not; the pointwise conv never has a bias (a BatchNorm always follows it).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, kernel_size: int = 3, dw_bias: bool = False):
        super().__init__(
            nn.Conv2d(cin, cin, kernel_size, stride, kernel_size // 2, groups=cin, bias=dw_bias),
            nn.Conv2d(cin, cout, 1, bias=False),
        )


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """conv 3×3 s1 'same' (no bias) + BN + ReLU: the CIFAR stem of seeds 001, 002 and 004."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PostActBlock(nn.Module):
    """conv1 → BN → act → [drop] → conv2 → BN → (+ shortcut) → act: the post-activation residual block of
    seeds 000, 001, 002 and 004, which differ only in their convolutions, activation and projection.

    The shortcut is the identity when the shape is unchanged (stride 1, cin == cout), else ``projection()``
    (called after the convs exist, so parameters are created in module order). ``drop`` (seed 002's block
    dropout) sits between the two convs; None leaves that slot out of the module tree.
    Shapes: (B, cin, H, W) -> (B, cout, ceil(H/stride), ceil(W/stride)).
    """

    def __init__(self, cin: int, cout: int, stride: int, convs: tuple[nn.Module, nn.Module],
                 act: Callable[[], nn.Module], projection: Callable[[], nn.Module], drop: nn.Module | None = None):
        super().__init__()
        self.conv1 = convs[0]
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = act()
        self.drop = drop
        self.conv2 = convs[1]
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = act()
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else projection()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        if self.drop is not None:
            out = self.drop(out)
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class BasicBlock(PostActBlock):
    """Post-activation ResNet BasicBlock (kuangliu / He et al. 2016) of seeds 001 and 002: a PostActBlock
    with conv3×3 convs, ReLU and a Dropout (Identity at 0) between the convs.

    The shortcut projection is conv k×k (stride, no bias) + BN with k = ``shortcut_kernel``. The main path
    outputs ceil(H/stride) for any H; a k×k stride-s conv outputs that too iff its total padding is k-1, so we
    pad (k-1)//2 before and k-1-(k-1)//2 after. For odd k this is ordinary symmetric padding; for even k it
    is one extra pixel at the bottom/right. (Seed 001 counted k=3 shortcuts without padding, which gives
    15×15 against 16×16 and cannot run; padding adds no parameters, so the seed's counts are unchanged.)
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, shortcut_kernel: int = 1, dropout: float = 0.0):
        if shortcut_kernel < 1:
            raise ValueError(f"shortcut_kernel must be >= 1, got {shortcut_kernel}")
        k = shortcut_kernel
        before, after = (k - 1) // 2, k - 1 - (k - 1) // 2

        def projection() -> nn.Module:
            if before == after:
                return nn.Sequential(nn.Conv2d(cin, cout, k, stride, before, bias=False), nn.BatchNorm2d(cout))
            return nn.Sequential(nn.ZeroPad2d((before, after, before, after)),  # (left, right, top, bottom)
                                 nn.Conv2d(cin, cout, k, stride, 0, bias=False), nn.BatchNorm2d(cout))

        # Seed 002's block dropout (off in its released code); Identity keeps the module tree stable.
        drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        super().__init__(cin, cout, stride, (nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                                             nn.Conv2d(cout, cout, 3, 1, 1, bias=False)),
                         lambda: nn.ReLU(inplace=True), projection, drop)


def make_stages(block: Callable[..., nn.Module], cin: int, widths: Sequence[int], blocks: Sequence[int],
                **block_options) -> nn.Sequential:
    """Stages of ``block(cin, cout, stride, **block_options)``: stage i has blocks[i] blocks of width
    widths[i]; every stage after the first halves the resolution in its first block. Module names are
    stages.<i>.<j>."""
    stages = []
    for i, (cout, n) in enumerate(zip(widths, blocks)):
        layers = []
        for j in range(n):
            layers.append(block(cin, cout, 2 if (i > 0 and j == 0) else 1, **block_options))
            cin = cout
        stages.append(nn.Sequential(*layers))
    return nn.Sequential(*stages)


def dirac_init_(model: nn.Module) -> int:
    """Start every square conv whose output is at least as wide as its input as the identity on its first
    ``in_channels`` filters (``torch.nn.init.dirac_``); the other filters keep their init. Returns how many
    convs were changed. Frozen convs (``requires_grad=False``) are left alone.
    """
    n = 0
    with torch.no_grad():
        for m in model.modules():
            if (isinstance(m, nn.Conv2d) and m.weight.requires_grad and m.groups == 1
                    and m.kernel_size[0] == m.kernel_size[1] and m.kernel_size[0] % 2 == 1
                    and m.out_channels >= m.in_channels):
                nn.init.dirac_(m.weight[: m.in_channels])
                n += 1
    return n
