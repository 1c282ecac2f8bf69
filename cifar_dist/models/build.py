"""Build the model a run config names, checked against its parameter budget."""

from __future__ import annotations

from torch import nn

from cifar_dist.config import ConfigError, ModelConfig, model_options
from cifar_dist.models.registry import count_params, create_model


def build_model(model_cfg: ModelConfig, num_classes: int) -> tuple[nn.Module, int]:
    """The model of `model_cfg` with `num_classes` outputs and its trainable parameter count.

    Raises ConfigError for an unknown model or option (the registry's message names it) and for a
    model over `model_cfg.max_params`. The memory format is left to the caller.
    """
    try:
        model = create_model(model_cfg.name, num_classes=num_classes, **model_options(model_cfg))
    except ValueError as e:
        raise ConfigError(f"--model.name={model_cfg.name}: {e}") from e
    n_params = count_params(model)
    if model_cfg.max_params and n_params > model_cfg.max_params:
        raise ConfigError(f"--model.max_params: {model_cfg.name} has {n_params:,} parameters, over the budget "
                          f"of {model_cfg.max_params:,}")
    return model, n_params
