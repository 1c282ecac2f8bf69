"""`cifar-dist`: the single entry for the project's commands. A thin Fire shell, no logic.

    cifar-dist prepare SOURCE --out data      convert CIFAR-10/100 or an image folder to .beton files
    cifar-dist train --preset=NAME [...]      train one configuration (same flags as -m cifar_dist.train)
    cifar-dist models                         the model zoo: parameters, MACs, receptive field
    cifar-dist presets                        the named recipes
    cifar-dist sweep plan|submit|status|run GRID   ablation grids (SLURM job arrays or local)
    cifar-dist report runs/<sweep>            mean +- std table and plots of a sweep
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable

USAGE = __doc__


def config_help() -> str:
    """Every config key with its type, default and the comment from config.py (its unit)."""
    from cifar_dist import config as c

    lines = []
    for section, cls in (("data", c.DataConfig), ("aug", c.AugConfig), ("model", c.ModelConfig),
                         ("optim", c.OptimConfig), ("sched", c.SchedConfig), ("loss", c.LossConfig),
                         ("run", c.RunConfig)):
        lines.append(f"  {section}:")
        for line in inspect.getsource(cls).splitlines():
            m = re.match(r"\s+(\w+): ([^=]+?) = (.+?)\s+#\s*(.*)$", line)
            if m:
                name, tp, default, comment = m.groups()
                choices = c.CHOICES.get(f"{section}.{name}")
                extra = f" [{'|'.join(choices)}]" if choices else ""
                lines.append(f"    --{section}.{name}={default}  ({tp}){extra}  {comment}")
    return "\n".join(lines)


def train_help() -> str:
    from cifar_dist.presets import list_presets
    from cifar_dist.train import __doc__ as train_doc

    return (f"{train_doc}\nPresets: {', '.join(list_presets())}\n\nOptions (defaults before any preset):\n"
            f"{config_help()}\n")


def _check_argv(argv: list[str]) -> str | None:
    """Return an error line for a bare word that is not the value of a preceding flag."""
    prev_flag = False
    for tok in argv:
        if tok.startswith("--"):
            prev_flag = "=" not in tok
        elif prev_flag:
            prev_flag = False
        else:
            return f"error: unexpected argument {tok!r}; expected --section.key=value flags (see --help)"
    return None


def fire_call(fn: Callable[..., int], argv: list[str] | None, name: str, help_text: Callable[[], str] | None = None) -> int:
    """Parse `--key=value` flags with Fire and call `fn`; --help prints `help_text()`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(help_text() if help_text else (fn.__doc__ or ""))
        return 0
    err = _check_argv(argv)
    if err:
        print(err, file=sys.stderr)
        return 2
    return _fire(fn, argv, name)


def _fire(fn: Callable[..., int], argv: list[str], name: str) -> int:
    """Run Fire without letting it print the return value; return fn's exit status."""
    import fire

    out: list[int] = []

    def call(*args, **kwargs):
        out.append(fn(*args, **kwargs))

    call.__signature__ = inspect.signature(fn)  # Fire reads the real parameters
    call.__doc__ = fn.__doc__
    try:
        fire.Fire(call, command=argv, name=name)
    except fire.core.FireExit as e:  # Fire already printed its message
        return int(e.code or 2)
    rc = out[0] if out else 0
    return rc if isinstance(rc, int) else 0


class Commands:
    """cifar_dist commands (see `cifar-dist --help`)."""

    def models(self) -> int:
        """Print the model zoo: name, parameters, MACs, receptive field, default input size."""
        from cifar_dist.models.info import print_models

        print_models()
        return 0

    def presets(self) -> int:
        """Print the presets with the first line of their docstrings."""
        from cifar_dist.presets import PRESETS

        for name, fn in sorted(PRESETS.items()):
            print(f"{name:24s} {(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "prepare":
        from data_prep.cli import main as prepare_main

        return prepare_main(rest, prog="cifar-dist prepare")
    if cmd == "train":
        from cifar_dist.train import run_cli

        return fire_call(run_cli, rest, name="cifar-dist train", help_text=train_help)
    if cmd == "sweep":
        from cifar_dist.sweep import main as sweep_main

        return sweep_main(rest)
    if cmd == "report":
        from cifar_dist.report import main as report_main

        return report_main(rest)
    commands = Commands()
    if not hasattr(commands, cmd) or cmd.startswith("_"):
        print(f"error: unknown command {cmd!r}; expected one of prepare, train, models, presets, sweep, report",
              file=sys.stderr)
        return 2
    return _fire(getattr(commands, cmd), rest, f"cifar-dist {cmd}")


if __name__ == "__main__":
    sys.exit(main())
