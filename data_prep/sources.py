"""Locating, classifying, fingerprinting and reading every supported CIFAR source.

Supported sources (see `resolve_source`):

* the official python archives ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` (a local
  path, an URL, or the shorthands ``cifar10`` / ``cifar100`` which download the official archive);
* an extracted batches folder: ``cifar-10-batches-py/`` (data_batch_1..5, test_batch, batches.meta) or
  ``cifar-100-python/`` (train, test, meta), or a folder that contains one of them;
* an image-folder tree ``train/<class>/*`` + ``test/<class>/*`` (any format PIL reads, 32x32), as a
  folder or as a ``.tar``/``.tar.gz`` (the tree may sit under one top-level folder inside the tar).

Contract of every reader: it returns a `SourceData` whose splits hold ``images`` as a C-contiguous
uint8 array of shape (N, 32, 32, 3) (HWC, RGB) and ``labels`` as int64 of shape (N,), with labels in
``range(len(class_names))``. Anything malformed raises `DataPrepError` naming the file (archive
members are named ``<archive>:<member>``) and what was expected and found. The readers live in
`data_prep.cifar_files` (official format) and `data_prep.image_folder` (image trees).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .archives import archive_stem, iter_members, open_tar
from .arrays import SPLITS, SourceData
from .cifar_files import (
    CIFAR10_DIR,
    CIFAR10_FILES,
    CIFAR10_META,
    CIFAR100_DIR,
    CIFAR100_FILES,
    CIFAR100_META,
    SOURCE_ORDER,
    batch_files,
    read_cifar_archive,
    read_cifar_dir,
)
from .download import CHUNK, OFFICIAL, default_cache_dir, fetch, file_digest, is_url, official_md5
from .errors import DataPrepError
from .image_folder import FOLDER_ORDER, read_image_folder, read_image_folder_tar

SourceKind = Literal["cifar_archive", "cifar_dir", "folder_dir", "folder_tar"]


@dataclass(frozen=True)
class SourceSpec:
    """A source located and classified, but not read yet (see `resolve_source`).

    Attributes:
        kind: how to read it.
        path: the local file or folder to read (the cached download for a URL).
        given: what the user passed (path or URL), for messages and the manifest.
        dataset: "cifar10", "cifar100" or "image_folder".
        default_name: the output name used when none is given.
        origin: the URL for a downloaded source, else the same as `given`.
    """

    kind: SourceKind
    path: Path
    given: str
    dataset: str
    default_name: str
    origin: str = ""

    def __post_init__(self) -> None:
        if not self.origin:
            object.__setattr__(self, "origin", self.given)


# --------------------------------------------------------------------------------------------- #
# Locating and classifying a source


def resolve_source(
    source: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    md5: str | None = None,
    progress: bool = True,
) -> SourceSpec:
    """Locate `source` (downloading it if it is a URL or ``cifar10``/``cifar100``) and classify it.

    `md5`, when given, is checked against a local archive file; downloads are always checked against
    `md5` or, for the official archives, their published md5.
    """
    given = os.fspath(source)
    if is_url(given) or (given in OFFICIAL and not Path(given).exists()):
        url = OFFICIAL[given].url if given in OFFICIAL else given
        expected = (md5 or official_md5(url) or "").lower() or None
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        path = fetch(url, cache, expected, progress=progress)
        return dataclasses.replace(_classify_file(path, str(path)), origin=url)
    path = Path(given).expanduser()
    if not path.exists():
        raise DataPrepError(
            given, "an existing archive or folder (or the shorthand cifar10/cifar100)", "nothing"
        )
    if path.is_dir():
        if md5 is not None:
            raise DataPrepError(given, "an archive file when --md5 is given", "a folder")
        return _classify_dir(path, given)
    if not path.is_file():
        raise DataPrepError(given, "a regular file or folder", "a special file")
    if md5 is not None:
        got = file_digest(path, "md5")
        if got != md5.lower():
            raise DataPrepError(given, f"md5 {md5.lower()}", f"md5 {got}")
    return _classify_file(path, given)


def _classify_dir(path: Path, given: str) -> SourceSpec:
    """Decide whether a folder is a CIFAR batches folder or an image-folder tree."""
    for candidate in (path, path / CIFAR10_DIR, path / CIFAR100_DIR):
        if (candidate / CIFAR10_META).is_file() or (candidate / "data_batch_1").is_file():
            return SourceSpec("cifar_dir", candidate, given, "cifar10", "cifar10")
        if (candidate / CIFAR100_META).is_file() and (candidate / "train").is_file():
            return SourceSpec("cifar_dir", candidate, given, "cifar100", "cifar100")
    name = path.resolve().name or "dataset"
    if (path / "train").is_dir() or (path / "test").is_dir():
        return SourceSpec("folder_dir", path, given, "image_folder", name)
    subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subdirs) == 1 and ((subdirs[0] / "train").is_dir() or (subdirs[0] / "test").is_dir()):
        return SourceSpec("folder_dir", subdirs[0], given, "image_folder", name)
    raise DataPrepError(
        given,
        f"a CIFAR batches folder ({CIFAR10_DIR}/ or {CIFAR100_DIR}/) or an image-folder tree "
        "(train/<class>/*, test/<class>/*)",
        "neither",
    )


def _classify_file(path: Path, given: str) -> SourceSpec:
    """Peek at the first members of a tar archive to tell an official CIFAR archive from a folder tree."""
    try:
        is_tar = tarfile.is_tarfile(path)
    except OSError as exc:
        raise DataPrepError(given, "a readable file", f"an error ({exc.strerror or exc})") from exc
    if not is_tar:
        raise DataPrepError(
            given,
            "a .tar/.tar.gz archive (official CIFAR python archive or image-folder tree)",
            "a file that is not a tar archive",
        )
    dataset = None
    with open_tar(path, given) as tar:
        for count, member in enumerate(iter_members(tar, given)):
            base = member.name.rsplit("/", 1)[-1]
            parts = member.name.split("/")
            if CIFAR10_DIR in parts[:-1] or (
                member.isfile() and (base in CIFAR10_FILES or base == CIFAR10_META)
            ):
                dataset = "cifar10"
            elif CIFAR100_DIR in parts[:-1] or (member.isfile() and base in (*CIFAR100_FILES, CIFAR100_META)):
                dataset = "cifar100"
            elif member.isfile() and len(parts) >= 3 and ("train" in parts[:-2] or "test" in parts[:-2]):
                dataset = "image_folder"
            if dataset is not None or count > 10_000:
                break
    stem = archive_stem(path.name)
    if dataset in ("cifar10", "cifar100"):
        return SourceSpec("cifar_archive", path, given, dataset, dataset)
    return SourceSpec("folder_tar", path, given, "image_folder", stem)


# --------------------------------------------------------------------------------------------- #
# Fingerprints


def source_sha256(spec: SourceSpec) -> str:
    """sha256 of the bytes a source consists of.

    For an archive: of the file. For a folder: of the sorted relative paths, sizes and contents of
    exactly the files the reader consumes (the CIFAR batch files, or everything under train/ and
    test/), so unrelated files next to them do not matter.
    """
    try:
        return _source_sha256(spec)
    except OSError as exc:
        raise DataPrepError(
            getattr(exc, "filename", None) or spec.path,
            "a readable source",
            f"an error ({exc.strerror or exc})",
        ) from exc


def _source_sha256(spec: SourceSpec) -> str:
    if spec.kind in ("cifar_archive", "folder_tar"):
        return file_digest(spec.path, "sha256")
    root = spec.path
    if spec.kind == "cifar_dir":
        files = [root / n for n in batch_files(spec.dataset) if (root / n).is_file()]
    else:
        files = [
            p for split in SPLITS if (root / split).is_dir() for p in (root / split).rglob("*") if p.is_file()
        ]
    sha = hashlib.sha256()
    for p in sorted(files, key=lambda q: q.relative_to(root).as_posix()):
        rel = p.relative_to(root).as_posix().encode()
        sha.update(len(rel).to_bytes(4, "little") + rel + p.stat().st_size.to_bytes(8, "little"))
        with open(p, "rb") as f:
            while block := f.read(CHUNK):
                sha.update(block)
    return sha.hexdigest()


# --------------------------------------------------------------------------------------------- #
# Reading


def read_source(
    spec: SourceSpec, *, labels: str = "fine", num_workers: int = 2, progress: bool = True
) -> SourceData:
    """Read the whole source (`resolve_source`'s spec) into memory, as the module docstring says; `num_workers`
    threads decode image files, `progress` shows tqdm bars on stderr."""
    check_labels(labels, spec.dataset)
    if spec.kind == "cifar_archive":
        return read_cifar_archive(spec.path, spec.dataset, spec.given, labels=labels, progress=progress)
    if spec.kind == "cifar_dir":
        return read_cifar_dir(spec.path, spec.dataset, labels=labels)
    if spec.kind == "folder_dir":
        return read_image_folder(spec.path, num_workers=num_workers, progress=progress)
    return read_image_folder_tar(spec.path, num_workers=num_workers, progress=progress, given=spec.given)


def check_labels(labels: str, dataset: str | None = None) -> None:
    """Raise DataPrepError unless `labels` is fine or coarse, and a label set of `dataset` when given."""
    if labels not in ("fine", "coarse"):
        raise DataPrepError("--labels", "fine or coarse", repr(labels))
    if labels == "coarse" and dataset not in (None, "cifar100"):
        raise DataPrepError(
            "--labels",
            "fine for a CIFAR-10 or image-folder source (coarse exists only in CIFAR-100)",
            "coarse",
        )


def write_order(spec: SourceSpec) -> dict:
    """How the rows of `spec`'s splits are ordered in the .beton (recorded in the manifest)."""
    return dict(FOLDER_ORDER if spec.dataset == "image_folder" else SOURCE_ORDER)


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_name(name: str) -> str:
    """Return `name` if it is usable as a file-name prefix, else raise DataPrepError."""
    if not _SAFE_NAME.match(name):
        raise DataPrepError(
            "--name", "letters, digits, '.', '_' or '-' (starting with a letter or digit)", repr(name)
        )
    return name
