"""``timm:<name>`` models: untrained timm networks, optionally with a CIFAR stem.

ImageNet stems downsample 4× before the first stage (7×7 s2 conv + 3×3 s2 max-pool), which leaves a
32×32 CIFAR image at 1×1 by the last stage. ``cifar_stem=True`` replaces that with the usual CIFAR stem:
a 3×3 stride-1 conv and no max-pool, so the stages see 32×32 as a ResNet-18 for CIFAR does.
"""

from __future__ import annotations

from typing import Any

from torch import nn

# The options every timm:<name> model takes besides timm's own keywords (checked by models.check_options).
TIMM_OPTION_TYPES = {"cifar_stem": bool, "dropout": float}


def _cifar_conv(old: nn.Conv2d) -> nn.Conv2d:
    """3×3 stride-1 'same' conv with ``old``'s channels, groups and bias; freshly initialised."""
    return nn.Conv2d(old.in_channels, old.out_channels, 3, 1, 1, groups=old.groups, bias=old.bias is not None)


def swap_to_cifar_stem(model: nn.Module, name: str = "model") -> nn.Module:
    """Replace ``model``'s ImageNet stem with a CIFAR stem in place; returns ``model``.

    Supported layouts (checked in this order):
    - ResNet family (resnet*, resnext*, seresnet*, wide_resnet*, ...): ``conv1`` is a Conv2d, or a deep
      stem ``nn.Sequential`` starting with a Conv2d, and ``maxpool`` is an ``nn.MaxPool2d``. The (first)
      stem conv becomes 3×3 stride 1 and the max-pool becomes Identity.
    - EfficientNet/MobileNet/MixNet family: ``conv_stem`` is a Conv2d; it becomes 3×3 stride 1.
    Anything else raises ``ValueError``: silently leaving an ImageNet stem would train a different net.
    """
    conv1, maxpool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
    if isinstance(maxpool, nn.MaxPool2d | nn.Identity):
        if isinstance(conv1, nn.Conv2d):
            model.conv1 = _cifar_conv(conv1)
            model.maxpool = nn.Identity()
            return model
        if isinstance(conv1, nn.Sequential) and isinstance(conv1[0], nn.Conv2d):
            conv1[0] = _cifar_conv(conv1[0])
            model.maxpool = nn.Identity()
            return model
    conv_stem = getattr(model, "conv_stem", None)
    if isinstance(conv_stem, nn.Conv2d):
        model.conv_stem = _cifar_conv(conv_stem)
        return model
    raise ValueError(
        f"cifar_stem=True is not supported for timm model {name!r} ({type(model).__name__}): no resnet-style "
        "conv1/maxpool or efficientnet-style conv_stem to replace; use cifar_stem=False or a registered model"
    )


def create_timm_model(
    name: str, *, num_classes: int = 10, cifar_stem: bool = False, **options: Any
) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=num_classes, **options)`` and, if
    ``cifar_stem``, ``swap_to_cifar_stem``. Never downloads weights.

    Shapes: (B, 3, H, W) -> logits (B, num_classes). timm's own errors (unknown name, unknown keyword)
    are re-raised as one-line ``ValueError``.
    """
    import timm

    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}; see timm.list_models() for valid names")
    if "dropout" in options:  # the project-wide option name; timm calls it drop_rate
        options["drop_rate"] = options.pop("dropout")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **options)
    except TypeError as e:
        raise ValueError(f"model option rejected by timm:{name}: {e}") from e
    if cifar_stem:
        swap_to_cifar_stem(model, name)
    return model
