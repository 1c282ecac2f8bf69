"""Files every layer may write and read: atomic writes, JSON readers, process checks (JSON lines: run_dir).

A file written here is never seen half-written: the bytes go to a temporary name in the same folder,
are flushed to disk, and the temporary is renamed over the target. A reader that meets a file it
cannot parse raises `FileFormatError`, whose one-line message names the file (and the line).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from cifar_dist.errors import InputError


class FileFormatError(InputError):
    """A file exists but is not what it should be; the message names it."""


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder, fsync and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; run files are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON value in `path`; `FileFormatError` naming the file when it cannot be read or parsed."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FileFormatError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise FileFormatError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from e


def read_json_or_none(path: str | os.PathLike[str]) -> Any:
    """The JSON value in `path`, or None when it is missing or unreadable (status files, caches)."""
    try:
        return read_json(path)
    except FileFormatError:
        return None


def pid_alive(pid: Any) -> bool:
    """Whether a process with this pid exists on this host (a pid owned by another user counts)."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
