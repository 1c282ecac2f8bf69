"""Exit statuses and the one exception family a command turns into "error: <one line>", status 2.

Every layer raises a subclass of `InputError` for input a user can fix (a flag, a file, a spec); only
the command-line face (`cifar_dist.cli`) prints it and picks the exit status.
"""

from __future__ import annotations

EXIT_OK = 0  # finished
EXIT_FAILED = 1  # a crash (a bug, not an input)
EXIT_BAD_INPUT = 2  # bad flag, file or spec; nothing written
EXIT_STOPPED = 3  # stopped by SIGTERM/SIGUSR1/SIGINT after saving a checkpoint (resume with --resume=auto)
EXIT_NONFINITE = 4  # stopped on a non-finite loss; the last good checkpoint is kept


class InputError(ValueError):
    """Input a user can fix; the message is one line naming the flag or file, expected and found."""

    def one_line(self) -> str:
        text = str(self) or type(self).__name__
        return " ".join(text.split("\n")[0].split()) if "\n" in text else text


class ConfigError(InputError):
    """A bad configuration value or command flag; the message is one line a user can act on."""


def did_you_mean(word: object, choices, prefix: str = "") -> str:
    """" (did you mean 'adamw'?)" for the choice closest to a misspelt `word` (difflib), else ""."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""
