"""The strict flag runner every command goes through: `run_schema`, a dataclass of options parsed once.

`run_schema(fn, schema, argv, prog)` reads argv once against the fields of `schema` (`cifar_dist.schema.parse`)
and calls `fn(**fields)`. `--help`/`-h` print `cifar_dist.schema.schema_help` on stdout and exit 0; input
errors (`InputError`: a flag, a value, or what the command raises about its input) become one `error:` line
and status 2.

Under a multi-process launch (`accelerate launch`, torchrun: LOCAL_RANK/RANK set) only the first
process of each launcher (LOCAL_RANK 0) prints the error line or the help; the others exit with the
same status silently, so a bad flag is reported once, not once per process. An error found before the
processes have met (a flag, a value: no process group yet) makes a silent process wait up to
`QUIET_RANK_WAIT_S` before it exits: torchrun stops every process as soon as one fails, and a silent one
that failed first would stop the reporting one before it printed (seen on a loaded machine). An error the
processes found together (after the process group is up) needs no wait: they all exit at once.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import fields

from cifar_dist.errors import EXIT_BAD_INPUT, EXIT_OK, InputError
from cifar_dist.run_dir import is_rank0
from cifar_dist.schema import parse, schema_help

QUIET_RANK_WAIT_S = 30.0  # how long a silent process gives the reporting one to print and exit first


def run_schema(fn: Callable[..., int | None], schema: type, argv: list[str], prog: str,
               epilog: str | Callable[[], str] = "") -> int:
    """Parse argv once against `schema`'s fields, then call `fn(**fields)` (see the module doc). `--help` before
    a lone `--` is the schema's help, then `epilog` (a callable is called only for the help: an epilog may
    need imports that flag checks must not wait for)."""
    head = argv[:argv.index("--")] if "--" in argv else argv  # after --: another program's options
    if any(a in ("-h", "--help") for a in head):
        if is_rank0(local=True):
            sys.stdout.write(schema_help(schema, prog, epilog() if callable(epilog) else epilog))
        return EXIT_OK
    try:
        args = parse(schema, argv, prog)
        rc = fn(**{f.name: getattr(args, f.name) for f in fields(args) if f.init})
        return rc if isinstance(rc, int) else EXIT_OK
    except InputError as e:
        if is_rank0(local=True):
            print(f"error: {e.one_line()}", file=sys.stderr, flush=True)
        elif not _process_group_up():  # the launcher stops this one once the reporting one has exited
            time.sleep(QUIET_RANK_WAIT_S)
        return EXIT_BAD_INPUT


def _process_group_up() -> bool:
    dist = sys.modules.get("torch.distributed")  # never imported here: flags are checked before torch is
    return bool(dist is not None and dist.is_available() and dist.is_initialized())
