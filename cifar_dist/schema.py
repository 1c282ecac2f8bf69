"""A command's options as the fields of one dataclass: typed values, one parse, `--help` from the fields.

Each field's annotation says how a value is read (`coerce`, the coercion every config key and every
command flag goes through), its default is the flag's default, and `metadata["help"]` (set with `opt`)
is the line `--help` prints for it (`help_lines`), so the help text is read from the same fields the
parser reads and cannot drift from the code.

`parse(schema, argv, prog)` reads a command line once against a schema: a field without a default is a
positional argument (also accepted as ``--name=value``; the last one, when it is a tuple, takes every
remaining argument: ``IMAGES...``); every other field is a flag, ``--name=value`` or ``--name value``; a
boolean field also takes ``--name`` and ``--noname``; `after_dashes` and `dotted_flags` fields collect what
no single field names. Anything the schema does not take is a one-line `FlagError` (with a "did you mean" for
a misspelt flag); a value of the wrong type, or outside the field's `choices`, is a one-line `ConfigError`
naming the flag.
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


def opt(default: Any = MISSING, help: str = "", *, metavar: str | None = None, choices: Sequence[str] = (),
        expected: str | None = None, usage: bool = False) -> Any:
    """A dataclass field with its default and the `--help` text of its flag (no default: a positional argument).

    `metavar`: shown instead of the default (`--weights=WHICH`; the default is then added to the help text);
    `choices`: the only texts the flag takes (kept as text: `--tta=none` is "none", not None); `expected`:
    what a value of the wrong type is said to miss (`TASK: expected an array index ..., found 'x'`);
    `usage`: the flag is spelt out in the usage line.
    """
    meta: dict[str, Any] = {"help": help, "metavar": metavar, "choices": tuple(choices), "expected": expected,
                            "usage": usage}
    return field(default=default, metadata={k: v for k, v in meta.items() if v})


def after_dashes(help: str, metavar: str) -> Any:
    """A field holding every argument after a lone ``--``, verbatim, as a tuple of text (`-- SBATCH_OPTION ...`)."""
    return field(default=(), metadata={"help": help, "metavar": metavar, "collect": "--"})


def dotted_flags(help: str, metavar: str = "SECTION.KEY=VALUE") -> Any:
    """A field holding every ``--section.key=value`` flag as (key, text) pairs, in the order given: each value
    is read once, later, against the config field it names (`cifar_dist.overrides`)."""
    return field(default=(), metadata={"help": help, "metavar": metavar, "collect": "."})


def type_name(tp: Any) -> str:
    """An annotation as its source spells it: `int`, `tuple[float, ...]`, `bool | None`."""
    if isinstance(tp, str):  # `from __future__ import annotations`: the source text itself
        return tp
    if isinstance(tp, type) and typing.get_origin(tp) is None:
        return tp.__name__
    return str(tp).replace("typing.", "").replace("collections.abc.", "")


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
    if tp in (int, float):  # an int takes a whole float and "1_000"; neither takes a bool
        number = value
        if isinstance(value, str):
            try:
                number = int(value.replace("_", "")) if tp is int else float(value)
            except ValueError:
                pass
        whole = isinstance(number, int) or (isinstance(number, float) and number.is_integer())
        if isinstance(number, (int, float)) and not isinstance(number, bool) and (tp is float or whole):
            return tp(number)
        raise ConfigError(f"{key}: expected {'an integer' if tp is int else 'a number'}, found {value!r}")
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


def _is_variadic(f: Field, tp: Any) -> bool:
    return _required(f) and typing.get_origin(tp) is tuple


def _arg_name(f: Field, tp: Any) -> str:
    return f.name.upper() + ("..." if _is_variadic(f, tp) else "")


def parse(schema: type[T], argv: Sequence[str], prog: str) -> T:
    """`schema(...)` from a command line, every value read once as its field's type (nothing is run)."""
    hints = typing.get_type_hints(schema)
    given = [f for f in fields(schema) if f.init]
    known = {f.name: f for f in given if "collect" not in f.metadata}
    collect = {f.metadata["collect"]: f.name for f in given if "collect" in f.metadata}
    argv, values = list(argv), {}
    if "--" in argv:
        argv, after = argv[:argv.index("--")], argv[argv.index("--") + 1:]
        if "--" not in collect:
            raise FlagError(f"{prog}: unexpected arguments after --: {' '.join(after)}" if after
                            else f"{prog}: unexpected argument '--' (see {prog} --help)")
        values[collect["--"]] = tuple(after)
    loose: list[str] = []
    dotted: list[tuple[str, str]] = []
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
        if name not in known and "." in name and "." in collect:
            text, i = (text, i) if has_value else _next_value(argv, i, key, prog)
            dotted.append((key, text))
            continue
        if name not in known and name.startswith("no") and name[2:] in known and _is_bool(hints[name[2:]]):
            if has_value:
                raise FlagError(f"{prog}: --{key} takes no value, found {tok!r}")
            values[name[2:]] = False
            continue
        if name not in known:
            raise FlagError(f"{prog}: unknown flag --{key} (expected {', '.join(f'--{n}' for n in known) or 'no flags'}; "
                            f"see {prog} --help)"
                            f"{did_you_mean(key, known, '--')}")
        if not has_value and _is_bool(hints[name]):
            values[name] = True
            continue
        text, i = (text, i) if has_value else _next_value(argv, i, key, prog)
        values[name] = _read(f"--{key}", known[name], hints[name], text)
    if "." in collect:
        values[collect["."]] = tuple(dotted)
    values.update(_positional(schema, hints, [f for f in given if f.name not in values], loose, prog))
    return schema(**values)


def _next_value(argv: list[str], i: int, key: str, prog: str) -> tuple[str, int]:
    """The value of `--key value` (the argument at `i`) and the index after it."""
    if i >= len(argv) or (argv[i].startswith("--") and not is_number(argv[i])):
        raise FlagError(f"{prog}: --{key} expects a value (--{key}=VALUE)")
    return argv[i], i + 1


def _read(key: str, f: Field, tp: Any, text: Any) -> Any:
    """`text` as field `f` takes it: one of its choices (as text), else coerced to its type `tp`."""
    choices = f.metadata.get("choices")
    if choices:
        if text not in choices:
            raise ConfigError(f"{key}: expected one of {', '.join(choices)}, found {text!r}"
                              f"{did_you_mean(text, choices)}")
        return text
    try:
        return coerce(key, tp, text)
    except ConfigError:
        if "expected" not in f.metadata:
            raise
        raise ConfigError(f"{key}: expected {f.metadata['expected']}, found {text!r}") from None


def _positional(schema: type, hints: dict[str, Any], free: list[Field], loose: list[str], prog: str) -> dict:
    """The positional arguments not given as flags, from the loose words in order (the last may be variadic)."""
    free = [f for f in free if _required(f)]
    rest = free.pop() if free and _is_variadic(free[-1], hints[free[-1].name]) else None
    if len(loose) > len(free) and rest is None:
        raise FlagError(f"{prog}: unexpected argument {loose[len(free)]!r} (see {prog} --help)")
    if len(loose) < len(free) + (rest is not None):
        missing = free[len(loose)] if len(loose) < len(free) else rest
        raise FlagError(f"{prog}: missing argument {missing.name.upper()} (see {prog} --help)")
    values = {f.name: _read(f.name.upper(), f, hints[f.name], text) for f, text in zip(free, loose)}
    if rest is not None:
        values[rest.name] = _read(rest.name.upper(), rest, hints[rest.name], loose[len(free):])
    return values


def help_lines(schema: type, prefix: str = "--", choices: dict[str, Sequence[str]] | None = None,
               skip: Sequence[str] = (), types: bool = True) -> list[str]:
    """One line per flag of `schema`: `<prefix><name>=<default or metavar>  (<type>) [<choices>]  <help>`."""
    lines = []
    for f in fields(schema):
        meta = f.metadata
        if _required(f) or f.name in skip or meta.get("collect") == "--":
            continue
        if meta.get("collect") == ".":
            lines.append(f"{prefix}{meta['metavar']}  {meta.get('help', '')}".rstrip())
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        allowed = (choices or {}).get(f.name) or meta.get("choices")
        kind = f"  ({type_name(f.type)})" if types else ""
        extra = f" [{'|'.join(allowed)}]" if allowed else ""
        note = f" (default: {format_value(default)})" if meta.get("metavar") and default is not None else ""
        shown = meta.get("metavar") or format_value(default)
        lines.append(f"{prefix}{f.name}={shown}{kind}{extra}  {meta.get('help', '')}{note}".rstrip())
    return lines


def usage_line(schema: type, prog: str) -> str:
    """`prog ARG... [--flag=VALUE] ... [--flag=value ...] [-- REST ...]`: the arguments, the flags marked
    `usage`, a reminder of the other flags, then what a lone `--` may be followed by."""
    hints = typing.get_type_hints(schema)
    parts, rest, others = [prog], [], False
    for f in fields(schema):
        meta = f.metadata
        if meta.get("collect") == "--":
            rest.append(f"[-- {meta['metavar']} ...]")
        elif meta.get("collect") == ".":
            parts.append(f"[--{meta['metavar']} ...]")
        elif _required(f):
            parts.append(_arg_name(f, hints[f.name]))
        elif meta.get("usage"):
            parts.append(f"[--{f.name}]" if _is_bool(hints[f.name]) else f"[--{f.name}={meta.get('metavar', 'VALUE')}]")
        else:
            others = True
    return " ".join(parts + (["[--flag=value ...]"] if others else []) + rest)


def schema_help(schema: type, prog: str, epilog: str = "") -> str:
    """The `--help` of a command: a usage line, the schema's docstring, its arguments and its flags, each with
    its default (or its `metavar`), choices and help text, then `epilog`."""
    hints = typing.get_type_hints(schema)
    arguments = [f for f in fields(schema) if f.init and (_required(f) or f.metadata.get("collect") == "--")]
    lines = [f"usage: {usage_line(schema, prog)}", "", inspect.getdoc(schema) or ""]
    if arguments:
        lines += ["", "arguments:"]
        lines += [f"  {_arg_name(f, hints[f.name]) if _required(f) else '-- ' + f.metadata['metavar'] + ' ...'}  "
                  f"{f.metadata.get('help', '')}" for f in arguments]
    flags = help_lines(schema, types=False)
    if flags:
        lines += ["", "flags (--flag=value or --flag value; a boolean flag alone is true, --noflag false):"]
        lines += [f"  {line}" for line in flags]
    if epilog:
        lines += ["", epilog.strip("\n")]
    return "\n".join(lines).rstrip() + "\n"
