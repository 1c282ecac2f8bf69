"""Overrides onto a Config: dotted keys from flags, YAML files and presets, each checked against the field it
targets. An unknown key, a wrong type or a value outside the field's choices (`cifar_dist.config.CHOICES`)
raises `ConfigError`, whose message is one line naming the key, what was expected and what was found;
no single value may be negative. What the values mean together is checked afterwards (`cifar_dist.rules`).
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import fields, is_dataclass, replace
from typing import Any

from cifar_dist.config import CHOICES, Config, ConfigError, ModelOptions
from cifar_dist.errors import did_you_mean
from cifar_dist.schema import coerce


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def coerce_value(key: str, tp: Any, value: Any) -> Any:
    """`value` converted to the type `tp` and range-checked as a config field is; ConfigError naming `key`."""
    value = coerce(key, tp, value)
    choices = CHOICES.get(key.lstrip("-"))
    if choices and value not in choices:
        raise ConfigError(f"{key}: expected one of {', '.join(choices)}, found {value!r}{did_you_mean(value, choices)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        raise ConfigError(f"{key}: expected a value >= 0, found {value!r}")
    return value


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Return `cfg` with dotted-key overrides applied, e.g. {"optim.lr": 0.2, "run.epochs": 3}.

    Keys may also be nested dicts ({"optim": {"lr": 0.2}}), as a YAML file gives them. A `model.*` key
    that is not a ModelConfig field is a model option: kept as given here and checked against the model
    by `cifar_dist.models.check_options`. When `model.name` changes, the old model's options are dropped.
    """
    flat: dict[str, Any] = {}
    for k, v in overrides.items():
        if isinstance(v, dict) and "." not in k and k in _field_types(Config):
            for kk, vv in v.items():
                flat[f"{k}.{kk}"] = vv
        else:
            flat[k] = v
    sections = {name: getattr(cfg, name) for name in _field_types(Config) if is_dataclass(getattr(cfg, name))}
    top: dict[str, Any] = {}
    changes: dict[str, dict[str, Any]] = {}
    options: dict[str, Any] = {}
    for key, value in flat.items():
        key = key.replace("-", "_")
        if "." not in key:
            if key == "preset":
                top[key] = str(value)
                continue
            raise ConfigError(
                f"--{key}: unknown option; expected --section.key=value with section one of "
                f"{', '.join(sections)}"
            )
        section, _, name = key.partition(".")
        if section not in sections:
            raise ConfigError(f"--{key}: unknown section {section!r}; expected one of {', '.join(sections)}"
                              f"{did_you_mean(section, sections)}")
        types_ = _field_types(type(sections[section]))
        if section == "model" and (name not in types_ or name == "options"):
            options.update(_option_items(key, name, value))
            continue
        if name not in types_:
            raise ConfigError(f"--{key}: unknown key; {section} has {', '.join(types_)}"
                              f"{did_you_mean(name, types_, f'--{section}.')}")
        changes.setdefault(section, {})[name] = coerce_value(f"--{key}", types_[name], value)
    model_changes = changes.get("model", {})
    if options or "name" in model_changes:
        renamed = model_changes.get("name", cfg.model.name) != cfg.model.name
        kept = {} if renamed else dict(cfg.model.options)
        changes.setdefault("model", {})["options"] = ModelOptions({**kept, **options})
    new_sections = {s: replace(sections[s], **c) for s, c in changes.items()}
    return replace(cfg, **new_sections, **top)


def _option_items(key: str, name: str, value: Any) -> dict[str, Any]:
    """`model.<option>` -> {option: value}; `model.options` (a mapping, as nested YAML gives it) -> itself."""
    if name != "options":
        return {name: value}
    if not isinstance(value, Mapping):
        raise ConfigError(f"--{key}: expected a mapping of model options, found {value!r}")
    return dict(value)
