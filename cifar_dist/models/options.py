"""The run config's model section against the registry: options checked and converted to the builder's
types, the model built within its parameter budget, and every model's options listed for ``--help``.

The config layer keeps ``--model.<option>=value`` as given (it does not know the models); the face calls
``check_options`` (or ``build_model``) before any work, so a misspelt option or a wrong type fails at once
with a one-line ``ConfigError`` naming the flag.
"""

from __future__ import annotations

import typing
from dataclasses import replace
from typing import Any

import torch
import yaml
from torch import nn

from cifar_dist.config import ConfigError, ModelConfig, ModelOptions, plain
from cifar_dist.models.layers import dirac_init_
from cifar_dist.models.registry import MODEL_REGISTRY, TIMM_PREFIX, count_params, create_model, get_entry
from cifar_dist.models.timm_models import TIMM_OPTION_TYPES
from cifar_dist.overrides import coerce_value
from cifar_dist.schema import type_name


def check_options(m: ModelConfig) -> ModelConfig:
    """``m`` with each option converted to the type its builder declares; ``ConfigError`` naming the flag
    for an unknown model, an option the model does not take, or a value of the wrong type.

    ``timm:<name>`` models take ``cifar_stem`` and ``dropout`` (checked here) and any other keyword of the
    timm builder, passed through as given and checked by timm when the model is built.
    """
    is_timm = m.name.startswith(TIMM_PREFIX)
    if is_timm:
        types: typing.Mapping[str, Any] = TIMM_OPTION_TYPES
    else:
        try:
            types = get_entry(m.name).option_types
        except ValueError as e:
            raise ConfigError(f"--model.name: {e}") from None
    checked = {}
    for name, value in m.options.items():
        key = f"--model.{name}"
        if name in types:
            checked[name] = coerce_value(key, types[name], value)
        elif is_timm:
            checked[name] = _literal(value)
        else:
            raise ConfigError(f"{key}: not an option of {m.name}; its options: {', '.join(types) or 'none'}")
    return replace(m, options=ModelOptions(checked))


def _literal(value: Any) -> Any:
    """A timm keyword's value as a command line gives it (text) read as a YAML literal: "0.1" -> 0.1,
    "[1, 2]" -> (1, 2), "true" -> True; any other value, and text that is no literal, as it is."""
    if not isinstance(value, str):
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    return tuple(parsed) if isinstance(parsed, list) else parsed if isinstance(parsed, (bool, int, float)) else value


def build_model(m: ModelConfig, num_classes: int) -> nn.Module:
    """Model ``m`` with ``num_classes`` outputs, options checked (``check_options``), in channels-last
    memory format if ``m.channels_last``. ``ConfigError`` for a bad option, a value the builder refuses, or
    more than ``m.max_params`` trainable parameters. ``m.dirac_init`` starts its square convs as identities
    (`layers.dirac_init_`). ``m.compile`` is left to the caller."""
    m = check_options(m)
    try:
        model = create_model(m.name, num_classes=num_classes, **m.options)
    except ValueError as e:  # a value the builder refuses (or timm's unknown keyword): its message names it
        raise ConfigError(f"--model.name={m.name}: {e}") from e
    n_params = count_params(model)
    if m.max_params and n_params > m.max_params:
        raise ConfigError(f"--model.max_params: {m.name} has {n_params:,} parameters, over the budget "
                          f"of {m.max_params:,}")
    if m.dirac_init:
        dirac_init_(model)
    if m.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def options_help() -> str:
    """Every registered model's options as ``--model.<option>=<default>  (type)``, one per line, for
    ``--help``; then the options of ``timm:<name>`` models."""
    lines = ["Model options (--model.<option>=value; the defaults of each model, before any preset):"]
    for name in sorted(MODEL_REGISTRY):
        entry = MODEL_REGISTRY[name]
        lines.append(f"  {name}:" + ("" if entry.options else " no options"))
        for opt, default in entry.options.items():
            lines.append(f"    --model.{opt}={plain(default)}  ({type_name(entry.option_types[opt])})")
    lines.append(f"  {TIMM_PREFIX}<name>:")
    lines.append("    --model.cifar_stem=False  (bool)  3x3 stride-1 stem, no max-pool")
    lines.append("    --model.dropout=<timm default>  (float)  timm's drop_rate")
    lines.append("    --model.<keyword>=value  any other keyword of timm.create_model(<name>)")
    return "\n".join(lines)
