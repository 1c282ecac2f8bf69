"""A command's options as the fields of one dataclass: typed values, one parse, `--help` from the fields.

Each field's annotation says how a value is read (`coerce`, the coercion every config key and every
command flag goes through), its default is the flag's default, and `metadata["help"]` (set with `opt`)
is the line `--help` prints for it (`help_lines`), so the help text is read from the same fields the
parser reads and cannot drift from the code.

`parse(schema, argv, prog)` reads a command line once against a schema: a field without a default is a
positional argument (also accepted as ``--name=value``); every other field is a flag, ``--name=value`` or
``--name value``; a boolean field also takes ``--name`` and ``--noname``. Anything the schema does not
take is a one-line `FlagError` (with a "did you mean" for a misspelt flag); a value of the wrong type is a
one-line `ConfigError` naming the flag.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, Field, field, fields
from typing import Any, TypeVar

import yaml

from cifar_dist.errors import ConfigError, InputError, did_you_mean

T = TypeVar("T")


class FlagError(InputError):
    """A flag or argument the command does not take."""


def opt(default: Any = MISSING, help: str = "") -> Any:
    """A dataclass field with its default and the `--help` text of its flag (no default: a positional argument)."""
    return field(default=default, metadata={"help": help})


def type_name(tp: Any) -> str:
    """An annotation as its source spells it: `int`, `tuple[float, ...]`, `bool | None`."""
    if isinstance(tp, str):  # `from __future__ import annotations`: the source text itself
        return tp
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(key: str, tp: Any, value: Any) -> Any:
    """Check `value` against the annotation `tp`; return it in canonical form or raise ConfigError naming `key`.

    Text as a command line gives it is read by the type: "true"/"no"/"1" for bool, "1_000" for int,
    "[3, 3, 3]" or "3,3,3" for a tuple, "none" for an optional field.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        return coerce(key, inner[0], value)
    if tp is Any:  # an option with neither annotation nor typed default: kept as given
        return value
    if origin in (tuple, list, Sequence):
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value if value.strip().startswith("[") else f"[{value}]")
            except yaml.YAMLError as e:
                raise ConfigError(f"{key}: expected a list of numbers, found {value!r}") from e
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, found {value!r}")
        elem = args[0] if args else Any
        return tuple(coerce(key, elem, v) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: expected true or false, found {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, found {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, found {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, found {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, found {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, found {value!r}")
    raise ConfigError(f"{key}: unsupported field type {type_name(tp)}")


def format_value(v: Any) -> str:
    """A default as a user types it: (0.4914, 0.4822, 0.4465), 0.1, true, none, text."""
    if isinstance(v, bool):
        return str(v).lower()
    if v is None:
        return "none"
    if isinstance(v, (list, tuple)):
        inner = ", ".join(format_value(x) for x in v)
        return f"[{inner}]" if isinstance(v, list) else f"({inner}{',' if len(v) == 1 else ''})"
    return str(v)


def is_number(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


def _required(f: Field) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _is_bool(tp: Any) -> bool:
    return tp is bool or (typing.get_origin(tp) in (typing.Union, types.UnionType) and bool in typing.get_args(tp))


def parse(schema: type[T], argv: Sequence[str], prog: str) -> T:
    """`schema(...)` from a command line, every value coerced to its field's type (nothing is run)."""
    hints = typing.get_type_hints(schema)
    known = {f.name: hints[f.name] for f in fields(schema) if f.init}
    values: dict[str, Any] = {}
    loose: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if tok == "-":  # refused by every command (Fire would read it as its command separator)
            raise FlagError(f"{prog}: unexpected argument '-' (see {prog} --help)")
        if not tok.startswith("-") or is_number(tok):
            loose.append(tok)
            continue
        if not tok.startswith("--"):
            raise FlagError(f"{prog}: unknown flag {tok!r}; flags are --name=value (see {prog} --help)")
        key, has_value, text = tok[2:].partition("=")
        name = key.replace("-", "_")
        if name not in known and name.startswith("no") and _is_bool(known.get(name[2:])):
            if has_value:
                raise FlagError(f"{prog}: --{key} takes no value, found {tok!r}")
            values[name[2:]] = False
            continue
        if name not in known:
            raise FlagError(f"{prog}: unknown flag --{key} (expected {', '.join(f'--{n}' for n in known)}; "
                            f"see {prog} --help){did_you_mean(key, known, '--')}")
        if not has_value and _is_bool(known[name]):
            values[name] = True
            continue
        if not has_value:
            if i >= len(argv) or (argv[i].startswith("--") and not is_number(argv[i])):
                raise FlagError(f"{prog}: --{key} expects a value (--{key}=VALUE)")
            text, i = argv[i], i + 1
        values[name] = coerce(f"--{key}", known[name], text)
    free = [f.name for f in fields(schema) if f.init and _required(f) and f.name not in values]
    if len(loose) > len(free):
        raise FlagError(f"{prog}: unexpected argument {loose[len(free)]!r} (see {prog} --help)")
    if len(loose) < len(free):
        raise FlagError(f"{prog}: missing argument {free[len(loose)].upper()} (see {prog} --help)")
    values.update((n, coerce(n.upper(), known[n], text)) for n, text in zip(free, loose))
    return schema(**values)


def help_lines(schema: type, prefix: str = "--", choices: dict[str, Sequence[str]] | None = None,
               skip: Sequence[str] = (), types: bool = True) -> list[str]:
    """One line per flag of `schema`: `<prefix><name>=<default>  (<type>) [<choices>]  <help>`."""
    lines = []
    for f in fields(schema):
        if _required(f) or f.name in skip:
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        allowed = (choices or {}).get(f.name)
        kind = f"  ({type_name(f.type)})" if types else ""
        extra = f" [{'|'.join(allowed)}]" if allowed else ""
        lines.append(f"{prefix}{f.name}={format_value(default)}{kind}{extra}  {f.metadata.get('help', '')}".rstrip())
    return lines


def schema_help(schema: type, prog: str, epilog: str = "") -> str:
    """Usage line, the schema's docstring, its positional arguments, its flags with defaults, then `epilog`."""
    positional = [f for f in fields(schema) if f.init and _required(f)]
    usage = " ".join([prog, *(f.name.upper() for f in positional), "[--flag=value ...]"])
    lines = [f"usage: {usage}", "", inspect.getdoc(schema) or ""]
    if positional:
        lines += ["", "arguments:", *(f"  {f.name.upper()}  {f.metadata.get('help', '')}" for f in positional)]
    lines += ["", "flags (--flag=value or --flag value; a boolean flag alone is true, --noflag false):"]
    lines += [f"  {line}" for line in help_lines(schema, types=False)]
    if epilog:
        lines += ["", epilog.strip("\n")]
    return "\n".join(lines).rstrip() + "\n"
