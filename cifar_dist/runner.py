"""The strict flag runner every command goes through: `run_schema` (a dataclass of options, parsed once)
and `run_command` (a function's signature; Fire underneath).

`run_schema(fn, schema, argv, prog)` reads argv once against the fields of `schema`
(`cifar_dist.schema.parse`: each value coerced to its field's type) and calls `fn(**fields)`; its
`--help` is generated from the fields' metadata (`cifar_dist.schema.schema_help`).

`run_command(fn, argv, prog)` serves the commands whose options are still a function's parameters. Fire
calls a function before it complains about flags it could not use, so a typo would run the whole command
first: every flag and positional argument is checked against the function's signature before anything
runs: an unknown flag, a missing or extra positional argument, a value on a boolean flag other than
true/false (`--json=3`) is one `error:` line and exit status 2. What Fire itself would print on a parse
failure (usage text) is swallowed and turned into that one line too.

Both: `--help`/`-h` print the help on stdout and exit 0; input errors raised by the command (`InputError`)
become one `error:` line and status 2.

Under a multi-process launch (`accelerate launch`, torchrun: LOCAL_RANK/RANK set) only the first
process of each launcher (LOCAL_RANK 0) prints the error line or the help; the others exit with the
same status silently, so a bad flag is reported once, not once per process. An error found before the
processes have met (a flag, a value: no process group yet) makes a silent process wait up to
`QUIET_RANK_WAIT_S` before it exits: torchrun stops every process as soon as one fails, and a silent one
that failed first would stop the reporting one before it printed (seen on a loaded machine). An error the
processes found together (after the process group is up) needs no wait: they all exit at once.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import sys
import time
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from cifar_dist.errors import EXIT_BAD_INPUT, EXIT_OK, InputError, did_you_mean
from cifar_dist.run_dir import is_rank0
from cifar_dist.schema import FlagError, format_value, is_number, parse, schema_help

__all__ = ["FlagError", "run_command", "run_schema", "signature_help"]

QUIET_RANK_WAIT_S = 30.0  # how long a silent process gives the reporting one to print and exit first


def _params(fn: Callable[..., Any]) -> tuple[dict[str, inspect.Parameter], bool, bool]:
    """Named parameters, whether **kwargs is taken, whether *args is taken."""
    sig = inspect.signature(fn)
    named = {n: p for n, p in sig.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    var_pos = any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values())
    return named, var_kw, var_pos


def _is_bool(p: inspect.Parameter) -> bool:
    return isinstance(p.default, bool) or p.annotation in (bool, "bool", "bool | None")


def _is_str(p: inspect.Parameter) -> bool:
    """A text parameter: Fire must not turn `--md5=000...` into 0 or `--name=1e3` into 1000.0."""
    return p.annotation in (str, "str", "str | None")


BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _bool_flag(name: str, key: str, value: str) -> str:
    """`--key=value` on a boolean flag as Fire reads it (`--name` / `--noname`); FlagError for another value.

    Fire would pass `--json=false` on as the string 'false' (true in Python) and `--json=3` as 3.
    """
    word = value.strip().lower()
    if word not in BOOL_WORDS:
        raise FlagError(f"--{key}: expected true or false, found {value!r}")
    return f"--{name}" if BOOL_WORDS[word] else f"--no{name}"


def check_argv(fn: Callable[..., Any], argv: list[str], prog: str) -> list[str]:
    """Raise FlagError for anything in argv that `fn` would not take (nothing is called).

    Returns argv as Fire should see it: boolean flags given a value (`--json=false`) spelled `--json`
    or `--nojson`, values of text parameters quoted so that Fire keeps them text.
    """
    named, var_kw, var_pos = _params(fn)
    given: set[str] = set()
    positional: list[str] = []
    at: list[int] = []  # where each positional argument sits in fire_argv
    fire_argv: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if tok == "-":  # Fire's command separator: it would call fn with the arguments before it
            raise FlagError(f"{prog}: unexpected argument '-' (see {prog} --help)")
        fire_argv.append(tok)
        if not tok.startswith("-") or is_number(tok):
            positional.append(tok)
            at.append(len(fire_argv) - 1)
            continue
        if not tok.startswith("--"):
            raise FlagError(f"{prog}: unknown flag {tok!r}; flags are --name=value (see {prog} --help)")
        key, has_value, _ = tok[2:].partition("=")
        name = key.replace("-", "_")
        param = named.get(name)
        if param is None and name.startswith("no") and named.get(name[2:]) is not None and _is_bool(named[name[2:]]):
            param, name = named[name[2:]], name[2:]
            if has_value:
                raise FlagError(f"{prog}: --{key} takes no value, found {tok!r}")
        if param is None and not (var_kw and "." in name):
            known = ", ".join(f"--{n}" for n in named if named[n].kind is not inspect.Parameter.POSITIONAL_ONLY)
            raise FlagError(f"{prog}: unknown flag --{key} (expected {known or 'no flags'}; see {prog} --help)"
                            f"{did_you_mean(key, named, '--')}")
        given.add(name)
        if has_value and param is not None and _is_bool(param):
            fire_argv[-1] = _bool_flag(name, key, tok.partition("=")[2])
        elif has_value and param is not None and _is_str(param):
            fire_argv[-1] = f"--{name}={tok.partition('=')[2]!r}"
        if not has_value and (param is None or not _is_bool(param)):
            if i >= len(argv) or (argv[i].startswith("--") and not is_number(argv[i])):
                raise FlagError(f"{prog}: --{key} expects a value (--{key}=VALUE)")
            fire_argv.append(repr(argv[i]) if param is not None and _is_str(param) else argv[i])
            i += 1
    free = [n for n, p in named.items() if n not in given and p.kind is not inspect.Parameter.KEYWORD_ONLY]
    if len(positional) > len(free) and not var_pos:
        extra = positional[len(free):]
        raise FlagError(f"{prog}: unexpected argument {extra[0]!r} (see {prog} --help)")
    missing = [n for n in free[len(positional):] if named[n].default is inspect.Parameter.empty]
    if missing:
        raise FlagError(f"{prog}: missing argument {missing[0].upper()} (see {prog} --help)")
    for name, j in zip(free, at):
        if _is_str(named[name]):
            fire_argv[j] = repr(fire_argv[j])
    return fire_argv


def signature_help(fn: Callable[..., Any], prog: str) -> str:
    """Usage line, the docstring, then every argument with its default (values, not Python names)."""
    named, _, var_pos = _params(fn)
    pos = [n.upper() for n, p in named.items() if p.default is inspect.Parameter.empty]
    if var_pos:
        pos += [f"{n.upper()}..." for n, p in inspect.signature(fn).parameters.items() if p.kind is p.VAR_POSITIONAL]
    usage = " ".join([prog, *pos, "[--flag=value ...]" if len(pos) < len(named) + var_pos else ""]).rstrip()
    doc = inspect.getdoc(fn) or ""
    lines = [f"usage: {usage}", "", doc]
    # flags the docstring already explains (`--name=...` at the start of a line) are not listed again
    opts = [(n, p) for n, p in named.items() if p.default is not inspect.Parameter.empty
            and not any(line.lstrip().startswith(f"--{n}=") for line in doc.splitlines())]
    if opts:
        lines += ["", "flags:"]
        lines += [f"  --{n}={format_value(p.default)}" for n, p in opts]
    return "\n".join(lines).rstrip() + "\n"


def run_command(fn: Callable[..., int | None], argv: list[str], prog: str,
                help_text: Callable[[], str] | None = None) -> int:
    """Check argv against fn, then call it through Fire; map input errors to one line and status 2."""
    return _guarded(lambda: _fire(fn, check_argv(fn, argv, prog), prog), argv,
                    help_text or (lambda: signature_help(fn, prog)))


def run_schema(fn: Callable[..., int | None], schema: type, argv: list[str], prog: str, epilog: str = "") -> int:
    """Parse argv once against `schema`'s fields, then call `fn(**fields)`; input errors: one line, status 2.

    `--help` is `schema`'s usage line, docstring, arguments and flags (from the fields), then `epilog`.
    """
    def call() -> int:
        args = parse(schema, argv, prog)
        rc = fn(**{f.name: getattr(args, f.name) for f in fields(args) if f.init})
        return rc if isinstance(rc, int) else EXIT_OK

    return _guarded(call, argv, lambda: schema_help(schema, prog, epilog))


def _guarded(call: Callable[[], int], argv: list[str], help_text: Callable[[], str]) -> int:
    """`--help`/`-h` anywhere: the help on stdout, status 0; else call(), an InputError becoming one line, 2."""
    if any(a in ("-h", "--help") for a in argv):
        if is_rank0(local=True):
            sys.stdout.write(help_text())
        return EXIT_OK
    try:
        return call()
    except InputError as e:
        if is_rank0(local=True):
            print(f"error: {e.one_line()}", file=sys.stderr, flush=True)
        elif not _process_group_up():  # the launcher stops this one once the reporting one has exited
            time.sleep(QUIET_RANK_WAIT_S)
        return EXIT_BAD_INPUT


def _process_group_up() -> bool:
    dist = sys.modules.get("torch.distributed")  # never imported here: flags are checked before torch is
    return bool(dist is not None and dist.is_available() and dist.is_initialized())


def _fire(fn: Callable[..., int | None], argv: list[str], prog: str) -> int:
    """Run Fire without letting it print the return value or its usage text; return fn's exit status."""
    import fire

    out: list[int | None] = []
    stderr = sys.stderr

    def call(*args, **kwargs):
        with contextlib.redirect_stderr(stderr):  # the command's own messages are not Fire's
            out.append(fn(*args, **kwargs))

    call.__signature__ = inspect.signature(fn)  # Fire reads the real parameters
    call.__doc__ = fn.__doc__
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # Fire's "ERROR: ..." and usage lines
            fire.Fire(call, command=argv, name=prog)
    except fire.core.FireExit as e:
        raise FlagError(f"{prog}: {_fire_error(e)} (see {prog} --help)") from None
    rc = out[0] if out else EXIT_OK
    return rc if isinstance(rc, int) else EXIT_OK


def _fire_error(e: Exception) -> str:
    """Fire's own one-line reason for a parse failure, from its component trace."""
    trace = getattr(e, "trace", None)
    try:
        text = trace.elements[-1].ErrorAsStr() if trace is not None else ""
    except (AttributeError, IndexError):
        text = ""
    first = " ".join(str(text).split("\n")[0].split())
    return first[:1].lower() + first[1:] if first else "could not parse the arguments"
