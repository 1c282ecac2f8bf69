"""Model zoo: a timm-style registry plus one module per model family.

    from cifar_dist.models import create_model, list_models, count_params
    model = create_model("tpsnet", num_classes=10, blocks=(3, 3, 3), c1=34)
    model = create_model("timm:resnet18", cifar_stem=True)
    model = build_model(cfg.model, num_classes=10)  # the run config's model: options checked, budget kept

Options come from each builder's signature and are set as ``--model.<option>=value``; ``check_options``
converts and checks them, ``options_help()`` lists them for ``--help``.

Every model maps a float tensor (B, 3, H, W) to logits (B, num_classes); H = W = the entry's
``input_size`` (32, or 320 for soheilnet) is always valid. ``cifar_dist.models.info`` prints the table
of parameters, MACs and receptive fields (``cifar-dist models``).
"""

# The family modules register themselves on import; importing them here fills MODEL_REGISTRY.
from cifar_dist.models import airbench, ds_resnet, resnet_cifar, simple_cnn, soheilnet, tpsnet  # noqa: F401
from cifar_dist.models.options import build_model, check_options, options_help
from cifar_dist.models.registry import (
    MODEL_REGISTRY,
    count_params,
    create_model,
    list_models,
    register_model,
)

__all__ = [
    "MODEL_REGISTRY",
    "build_model",
    "check_options",
    "count_params",
    "create_model",
    "list_models",
    "options_help",
    "register_model",
]
