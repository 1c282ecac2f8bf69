"""Model registry: ``@register_model`` fills ``MODEL_REGISTRY``; ``create_model`` builds by name.

The registered builder's name (a function's own, or the ``name`` a model class is registered under) is the
CLI name (``--model.name=tpsnet``). Its keyword parameters other than ``num_classes`` are the model's options
(``--model.blocks=[3,3,3]``); they are read from the signature once, at registration, with their defaults
and types, so an unknown option or a value of the wrong type is rejected before anything is built
(``cifar_dist.models.options.check_options``).

Names of the form ``timm:<name>`` are not in the registry; they are handed to timm (see ``timm_models``).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from torch import nn

from cifar_dist.config import ModelConfig

TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class ModelEntry:
    """One registered model.

    Attributes:
        name: CLI name (the builder function's ``__name__`` unless registered under another).
        fn: builder ``fn(*, num_classes: int, **options) -> nn.Module``.
        input_size: default square input side in pixels; the model is specified (and its MACs and
            receptive field reported) at ``(B, 3, input_size, input_size)``.
        description: one line for ``cifar-dist models``.
        options: accepted option name -> default value, in signature order (``num_classes`` excluded).
        option_types: option name -> the type a CLI value is converted to: the annotation, else the
            default's type.
    """

    name: str
    fn: Callable[..., nn.Module]
    input_size: int
    description: str
    options: Mapping[str, Any] = field(default_factory=dict)
    option_types: Mapping[str, Any] = field(default_factory=dict)


MODEL_REGISTRY: dict[str, ModelEntry] = {}
_RESERVED = {f.name for f in fields(ModelConfig)}  # --model.name, --model.max_params, ... are not options


def _option_type(annotation: Any, default: Any) -> Any:
    """The annotation, else the default's type (a tuple default reads as ``tuple[<first item's type>, ...]``)."""
    if annotation is not inspect.Parameter.empty:
        return annotation
    if isinstance(default, tuple):
        return tuple[type(default[0]) if default else Any, ...]
    return Any if default is None else type(default)


def _options_from_signature(fn: Callable[..., nn.Module]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Option name -> default, and option name -> type (``_option_type``), for every parameter of ``fn``
    except ``num_classes``.

    Every option must have a default: a bare ``create_model(name)`` has to build the reference model.
    """
    params = inspect.signature(fn).parameters
    if "num_classes" not in params:
        raise TypeError(f"model builder {fn.__name__} must take a num_classes keyword")
    try:
        hints = typing.get_type_hints(fn.__init__ if isinstance(fn, type) else fn)
    except NameError:  # an annotation naming something out of the builder's module scope
        hints = {}
    options: dict[str, Any] = {}
    types: dict[str, Any] = {}
    for pname, p in params.items():
        if pname == "num_classes":
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is p.empty:
            raise TypeError(f"model builder {fn.__name__}: option {pname!r} must be a keyword with a default")
        if pname in _RESERVED:
            raise TypeError(f"model builder {fn.__name__}: option {pname!r} clashes with --model.{pname}")
        options[pname] = p.default
        types[pname] = _option_type(hints.get(pname, p.empty), p.default)
    return options, types


def register_model(
    fn: Callable[..., nn.Module] | None = None, *, name: str = "", input_size: int = 32, description: str = ""
):
    """Register a model builder under ``name``, by default its function name; usable as ``@register_model``
    or ``@register_model(input_size=320, description="...")``. A builder may be the ``nn.Module`` class
    itself (then with a ``name``): its ``__init__`` keywords are the options.

    ``description`` defaults to the first line of the builder's docstring. Returns the builder unchanged.
    Registering the same name twice is an error (two modules would silently shadow each other).
    """

    def decorate(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        model_name = name or f.__name__
        if model_name in MODEL_REGISTRY:
            raise ValueError(f"model {model_name!r} is registered twice")
        doc_line = (inspect.getdoc(f) or "").strip().splitlines()
        options, types = _options_from_signature(f)
        MODEL_REGISTRY[model_name] = ModelEntry(
            name=model_name,
            fn=f,
            input_size=int(input_size),
            description=description or (doc_line[0] if doc_line else ""),
            options=MappingProxyType(options),
            option_types=MappingProxyType(types),
        )
        return f

    return decorate(fn) if fn is not None else decorate


def list_models() -> list[str]:
    """Sorted names of the registered models (``timm:<name>`` models are not listed)."""
    return sorted(MODEL_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; ``ValueError`` naming the valid models otherwise."""
    try:
        return MODEL_REGISTRY[name]
    except KeyError:
        valid = ", ".join(list_models())
        raise ValueError(
            f"unknown model {name!r}; valid names: {valid}, or {TIMM_PREFIX}<timm name>"
        ) from None


def create_model(name: str, *, num_classes: int = 10, **options: Any) -> nn.Module:
    """Build model ``name`` with ``num_classes`` outputs (every model's contract is in the package doc).

    Options not accepted by the model raise ``ValueError`` before anything is built. ``timm:<name>`` builds an
    untrained timm model (no download) and accepts ``cifar_stem: bool`` plus any keyword the timm model takes.
    """
    if name.startswith(TIMM_PREFIX):
        # Imported lazily: timm is heavy to import and only this branch needs it.
        from cifar_dist.models.timm_models import create_timm_model

        return create_timm_model(name[len(TIMM_PREFIX) :], num_classes=num_classes, **options)
    entry = get_entry(name)
    for key in options:
        if key not in entry.options:
            accepted = ", ".join(entry.options) or "none"
            raise ValueError(f"model option {key!r} is not accepted by {name} (accepted: {accepted})")
    return entry.fn(num_classes=num_classes, **options)


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (``requires_grad``), each shared tensor counted once."""
    # parameters() yields each shared (tied) tensor once, so tied weights are not double-counted.
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
