"""Fire dispatches the subcommands of `cifar-dist` (and of `cifar-dist sweep`); it parses no flags.

A command group is an object whose public methods are its subcommands, each without parameters: it reads
the rest of the command line, held by the object, once against its own schema
(`cifar_dist.runner.run_schema`) and returns the exit status. `dispatch(commands, name, prog)` hands Fire
only the subcommand's name (`command=[name]`), so Fire finds the method and calls it; every flag stays with
the command's own parser. The caller checks the name first (an unknown one is its one `error:` line, with a
"did you mean"), so Fire never reports anything itself.
"""

from __future__ import annotations

import fire

from cifar_dist.errors import EXIT_OK


def subcommands(group: type) -> tuple[str, ...]:
    """The names of `group`'s subcommands (its public methods), in the order the class defines them."""
    return tuple(n for n, v in vars(group).items() if callable(v) and not n.startswith("_"))


def dispatch(commands: object, name: str, prog: str) -> int:
    """Call `commands.<name>()` through Fire and return its exit status (`name` is one of its subcommands).

    Fire prints a command's return value; `serialize` turns it into None, which Fire does not print, and
    Fire still returns the value itself.
    """
    status = fire.Fire(commands, command=[name], name=prog, serialize=lambda result: None)
    return status if isinstance(status, int) else EXIT_OK
