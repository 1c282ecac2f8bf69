"""Streaming reads of (possibly compressed) tar archives; every read error becomes a `DataPrepError`."""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from .errors import DataPrepError

TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar")
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


def archive_stem(filename: str) -> str:
    """The file name without its archive suffix (``pets.tar.gz`` -> ``pets``)."""
    for suffix in TAR_SUFFIXES:
        if filename.lower().endswith(suffix):
            return filename[: -len(suffix)] or "dataset"
    return filename.rsplit(".", 1)[0] or "dataset"


def open_tar(path: Path, given: str) -> tarfile.TarFile:
    """Open a (possibly compressed) tar for one streaming pass."""
    try:
        return tarfile.open(path, mode="r|*")
    except _READ_ERRORS as exc:
        raise DataPrepError(given, "a readable tar archive", f"a corrupt archive ({exc})") from exc


def iter_members(tar: tarfile.TarFile, given: str) -> Iterator[tarfile.TarInfo]:
    """Yield members with normalised names (no leading ``./`` or ``/``); read errors become DataPrepError."""
    it = iter(tar)
    while True:
        try:
            member = next(it)
        except StopIteration:
            return
        except _READ_ERRORS as exc:
            raise DataPrepError(
                given, "a complete tar archive", f"a truncated or corrupt archive ({exc})"
            ) from exc
        name = member.name
        while name.startswith("./"):
            name = name[2:]
        member.name = name.strip("/")
        if member.name and member.name != ".":
            yield member


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, given: str) -> bytes:
    """The bytes of one member of a streaming tar (the member just yielded by `iter_members`)."""
    try:
        f = tar.extractfile(member)
        data = f.read() if f is not None else b""
    except _READ_ERRORS as exc:
        raise DataPrepError(
            f"{given}:{member.name}", "a complete tar archive", f"a truncated or corrupt archive ({exc})"
        ) from exc
    if len(data) != member.size:
        raise DataPrepError(
            f"{given}:{member.name}", f"{member.size} bytes", f"{len(data)} bytes (truncated archive)"
        )
    return data
