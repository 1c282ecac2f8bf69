"""Readers for every supported CIFAR source, each returning the same in-memory arrays.

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
members are named ``<archive>:<member>``) and what was expected and found.

Pickles are loaded with a restricted unpickler that only accepts the numpy array types the official
files use, so a hostile archive cannot run code.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import multiprocessing
import os
import pickle
import re
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .download import OFFICIAL, default_cache_dir, fetch, file_digests, is_url, official_md5
from .errors import DataPrepError

SIDE = 32
SPLITS = ("train", "test")
SourceKind = Literal["cifar_archive", "cifar_dir", "folder_dir", "folder_tar"]

CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
CIFAR10_META = "batches.meta"
CIFAR100_FILES = ("train", "test")
CIFAR100_META = "meta"
CIFAR10_DIR, CIFAR100_DIR = "cifar-10-batches-py", "cifar-100-python"
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar")
DECODE_CHUNK = 500  # images per task sent to a decoding worker


@dataclass(frozen=True)
class Split:
    """One split in memory: images uint8 (N, 32, 32, 3) RGB and labels int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class SourceData:
    """A whole data set read from a source.

    Attributes:
        dataset: "cifar10", "cifar100" or "image_folder".
        class_names: label index -> class name.
        train, test: the two splits.
        label_kind: "fine" or "coarse" for CIFAR-100, None otherwise.
    """

    dataset: str
    class_names: tuple[str, ...]
    train: Split
    test: Split
    label_kind: str | None = None

    def split(self, name: str) -> Split:
        """The split called `name` ("train" or "test")."""
        return {"train": self.train, "test": self.test}[name]


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

    Raises:
        DataPrepError: missing path, unsupported file, unreachable URL, md5 mismatch, ...
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
        got = file_digests(path)[0]
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
    with _open_tar(path, given) as tar:
        for count, member in enumerate(_iter_members(tar, given)):
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
    stem = _archive_stem(path.name)
    if dataset in ("cifar10", "cifar100"):
        return SourceSpec("cifar_archive", path, given, dataset, dataset)
    return SourceSpec("folder_tar", path, given, "image_folder", stem)


def _archive_stem(filename: str) -> str:
    for suffix in TAR_SUFFIXES:
        if filename.lower().endswith(suffix):
            return filename[: -len(suffix)] or "dataset"
    return filename.rsplit(".", 1)[0] or "dataset"


def _open_tar(path: Path, given: str) -> tarfile.TarFile:
    """Open a (possibly compressed) tar for one streaming pass."""
    try:
        return tarfile.open(path, mode="r|*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataPrepError(given, "a readable tar archive", f"a corrupt archive ({exc})") from exc


def _iter_members(tar: tarfile.TarFile, given: str) -> Iterator[tarfile.TarInfo]:
    """Yield members with normalised names (no leading ``./`` or ``/``); read errors become DataPrepError."""
    it = iter(tar)
    while True:
        try:
            member = next(it)
        except StopIteration:
            return
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise DataPrepError(
                given, "a complete tar archive", f"a truncated or corrupt archive ({exc})"
            ) from exc
        name = member.name
        while name.startswith("./"):
            name = name[2:]
        member.name = name.strip("/")
        if member.name and member.name != ".":
            yield member


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, given: str) -> bytes:
    try:
        f = tar.extractfile(member)
        data = f.read() if f is not None else b""
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataPrepError(
            f"{given}:{member.name}", "a complete tar archive", f"a truncated or corrupt archive ({exc})"
        ) from exc
    if len(data) != member.size:
        raise DataPrepError(
            f"{given}:{member.name}", f"{member.size} bytes", f"{len(data)} bytes (truncated archive)"
        )
    return data


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
        return file_digests(spec.path)[1]
    root = spec.path
    if spec.kind == "cifar_dir":
        names = (
            (*CIFAR10_FILES, CIFAR10_META) if spec.dataset == "cifar10" else (*CIFAR100_FILES, CIFAR100_META)
        )
        files = [root / n for n in names if (root / n).is_file()]
    else:
        files = [
            p for split in SPLITS if (root / split).is_dir() for p in (root / split).rglob("*") if p.is_file()
        ]
    sha = hashlib.sha256()
    for p in sorted(files, key=lambda q: q.relative_to(root).as_posix()):
        rel = p.relative_to(root).as_posix().encode()
        sha.update(len(rel).to_bytes(4, "little") + rel + p.stat().st_size.to_bytes(8, "little"))
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                sha.update(block)
    return sha.hexdigest()


# --------------------------------------------------------------------------------------------- #
# Reading


def read_source(
    spec: SourceSpec, *, labels: str = "fine", num_workers: int = 2, progress: bool = True
) -> SourceData:
    """Read the whole source into memory (see the module docstring for the contract).

    Args:
        spec: from `resolve_source`.
        labels: "fine" or "coarse"; "coarse" is only valid for CIFAR-100.
        num_workers: processes used to decode image files (image-folder sources).
        progress: show tqdm bars on stderr.
    """
    if labels not in ("fine", "coarse"):
        raise DataPrepError("--labels", "fine or coarse", repr(labels))
    if labels == "coarse" and spec.dataset != "cifar100":
        raise DataPrepError(
            "--labels",
            "fine for a CIFAR-10 or image-folder source (coarse exists only in CIFAR-100)",
            "coarse",
        )
    if spec.kind == "cifar_archive":
        return read_cifar_archive(spec.path, labels=labels, given=spec.given, progress=progress)
    if spec.kind == "cifar_dir":
        return read_cifar_dir(spec.path, labels=labels)
    if spec.kind == "folder_dir":
        return read_image_folder(spec.path, num_workers=num_workers, progress=progress)
    return read_image_folder_tar(spec.path, num_workers=num_workers, progress=progress, given=spec.given)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals numpy arrays (and py2 byte strings) need."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if module.startswith("numpy.core"):  # numpy >= 2 keeps the implementation in numpy._core
            module = "numpy._core" + module[len("numpy.core") :]
        return super().find_class(module, name)


def _load_pickle(data: bytes, where: str) -> dict[bytes, Any]:
    """Unpickle a CIFAR batch/meta file into a dict with bytes keys."""
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # unpickling garbage raises many types (UnpicklingError, EOFError, ...)
        raise DataPrepError(
            where, "a pickled dict (CIFAR python format)", f"unreadable data ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(obj, dict):
        raise DataPrepError(where, "a pickled dict (CIFAR python format)", f"a pickled {type(obj).__name__}")
    return {(k.encode() if isinstance(k, str) else k): v for k, v in obj.items()}


def _require_keys(d: Mapping[bytes, Any], keys: Sequence[bytes], where: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        found = ", ".join(repr(k) for k in sorted(d, key=repr)) or "no keys"
        raise DataPrepError(where, f"keys {', '.join(repr(k) for k in keys)}", f"keys {found}")


def _names(value: Any, where: str, key: bytes) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise DataPrepError(where, f"{key!r} as a non-empty list of class names", type(value).__name__)
    return tuple(v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in value)


def _batch_arrays(d: Mapping[bytes, Any], label_key: bytes, num_classes: int, where: str) -> Split:
    """Validate one batch dict and convert its CHW rows to (N, 32, 32, 3) RGB images."""
    _require_keys(d, (b"data", label_key), where)
    data = d[b"data"]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3 * SIDE * SIDE
    ):
        found = (
            f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise DataPrepError(where, "b'data' as a uint8 array of shape (N, 3072)", found)
    try:
        labels = np.asarray(d[label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataPrepError(
            where, f"{label_key!r} as a list of integers", f"{type(d[label_key]).__name__} ({exc})"
        ) from exc
    if labels.shape[0] != data.shape[0]:
        raise DataPrepError(where, f"{data.shape[0]} labels (one per row of b'data')", f"{labels.shape[0]}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataPrepError(
            where, f"labels in 0..{num_classes - 1}", f"labels in {labels.min()}..{labels.max()}"
        )
    images = np.ascontiguousarray(data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))
    return Split(images, labels)


def _concat(parts: Sequence[Split]) -> Split:
    return Split(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))


def _parse_cifar(
    dataset: str, files: Mapping[str, Callable[[], bytes]], where: Callable[[str], str], labels: str
) -> SourceData:
    """Build SourceData from the raw bytes of the official batch files (`files` maps file name -> reader)."""
    wanted = (*CIFAR10_FILES, CIFAR10_META) if dataset == "cifar10" else (*CIFAR100_FILES, CIFAR100_META)
    for name in wanted:
        if name not in files:
            raise DataPrepError(where(name), "this file of the official layout", "it missing")
    if dataset == "cifar10":
        meta_key, label_key = b"label_names", b"labels"
        meta_name, train_names, test_names = CIFAR10_META, CIFAR10_FILES[:5], CIFAR10_FILES[5:]
    else:
        meta_key = b"fine_label_names" if labels == "fine" else b"coarse_label_names"
        label_key = b"fine_labels" if labels == "fine" else b"coarse_labels"
        meta_name, train_names, test_names = CIFAR100_META, ("train",), ("test",)
    meta = _load_pickle(files[meta_name](), where(meta_name))
    _require_keys(meta, (meta_key,), where(meta_name))
    class_names = _names(meta[meta_key], where(meta_name), meta_key)

    def load(names: Sequence[str]) -> Split:
        return _concat(
            [
                _batch_arrays(_load_pickle(files[n](), where(n)), label_key, len(class_names), where(n))
                for n in names
            ]
        )

    return SourceData(
        dataset, class_names, load(train_names), load(test_names), labels if dataset == "cifar100" else None
    )


def read_cifar_archive(
    path: str | os.PathLike[str], *, labels: str = "fine", given: str | None = None, progress: bool = False
) -> SourceData:
    """Read an official ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` in one streaming pass."""
    path = Path(path)
    given = given or str(path)
    wanted = {*CIFAR10_FILES, CIFAR10_META, *CIFAR100_FILES, CIFAR100_META}
    blobs: dict[str, bytes] = {}
    member_of: dict[str, str] = {}
    dataset = None
    with (
        _open_tar(path, given) as tar,
        tqdm(unit="B", unit_scale=True, desc="read archive", disable=not progress) as bar,
    ):
        for member in _iter_members(tar, given):
            bar.update(member.size)
            parts = member.name.split("/")
            if dataset is None and CIFAR10_DIR in parts[:-1]:
                dataset = "cifar10"
            elif dataset is None and CIFAR100_DIR in parts[:-1]:
                dataset = "cifar100"
            if member.isfile() and parts[-1] in wanted and parts[-1] not in blobs:
                blobs[parts[-1]] = _read_member(tar, member, given)
                member_of[parts[-1]] = member.name
    if dataset is None:
        dataset = "cifar10" if CIFAR10_META in blobs or "data_batch_1" in blobs else "cifar100"
    folder = CIFAR10_DIR if dataset == "cifar10" else CIFAR100_DIR

    def where(name: str) -> str:
        return f"{given}:{member_of.get(name, f'{folder}/{name}')}"

    files = {name: (lambda b=blob: b) for name, blob in blobs.items()}
    return _parse_cifar(dataset, files, where, labels)


def read_cifar_dir(path: str | os.PathLike[str], *, labels: str = "fine") -> SourceData:
    """Read an extracted ``cifar-10-batches-py/`` or ``cifar-100-python/`` folder."""
    path = Path(path)
    is10 = (path / CIFAR10_META).is_file() or (path / "data_batch_1").is_file()
    dataset = "cifar10" if is10 else "cifar100"
    names = (*CIFAR10_FILES, CIFAR10_META) if is10 else (*CIFAR100_FILES, CIFAR100_META)
    files = {n: functools.partial(_read_file, path / n) for n in names if (path / n).is_file()}
    return _parse_cifar(dataset, files, lambda n: str(path / n), labels)


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataPrepError(path, "a readable file", f"an error ({exc.strerror or exc})") from exc


# --------------------------------------------------------------------------------------------- #
# Image-folder trees

Tree = dict[str, dict[str, list[str]]]  # split -> class -> sorted image keys (display names)
Problem = tuple[str, str, str]  # (path, expected, found), the arguments of DataPrepError


def _build_tree(
    files: Iterable[str], dirs: Iterable[str], display: Callable[[str], str]
) -> tuple[tuple[str, ...], Tree]:
    """Validate a folder tree given as relative paths and return (class names, tree of display names).

    `dirs` lists relative folder paths so that empty class folders are seen. Paths outside train/ and
    test/ and hidden entries (any component starting with ".") are ignored. Class names are the sorted
    folder names of train/; test/ must have the same set.
    """
    tree: Tree = {split: {} for split in SPLITS}
    for d in dirs:
        parts = d.split("/")
        if parts[0] in SPLITS and len(parts) == 2 and not parts[1].startswith("."):
            tree[parts[0]].setdefault(parts[1], [])
    for rel in files:
        parts = rel.split("/")
        if parts[0] not in SPLITS or len(parts) < 2 or any(p.startswith(".") for p in parts):
            continue
        if len(parts) == 2:
            raise DataPrepError(display(rel), f"only class folders inside {parts[0]}/", "a file")
        if len(parts) > 3:
            raise DataPrepError(
                display("/".join(parts[:3])), "image files in a class folder", "a nested folder"
            )
        tree[parts[0]].setdefault(parts[1], []).append(display(rel))
    for split in SPLITS:
        if not tree[split]:
            raise DataPrepError(
                display(split), f"a {split}/ folder with one sub-folder per class", "no class folders"
            )
        for cls, keys in tree[split].items():
            if not keys:
                raise DataPrepError(
                    display(f"{split}/{cls}"),
                    "at least one image in each class folder",
                    "an empty class folder",
                )
            keys.sort()
    train_classes, test_classes = set(tree["train"]), set(tree["test"])
    if train_classes != test_classes:
        only_train = ", ".join(sorted(train_classes - test_classes)) or "none"
        only_test = ", ".join(sorted(test_classes - train_classes)) or "none"
        raise DataPrepError(
            display(""),
            "the same class folders in train/ and test/",
            f"only in train: {only_train}; only in test: {only_test}",
        )
    return tuple(sorted(train_classes)), tree


def _decode_chunk(chunk: Sequence[tuple[str, str | bytes]]) -> tuple[np.ndarray, dict[int, Problem]]:
    """Decode images to (k, 32, 32, 3) uint8 RGB; describe each bad one instead of raising.

    A payload is the file's bytes or its path. Runs in pool workers, hence no exceptions.
    """
    out = np.zeros((len(chunk), SIDE, SIDE, 3), dtype=np.uint8)
    problems: dict[int, Problem] = {}
    for i, (key, payload) in enumerate(chunk):
        try:
            data = payload if isinstance(payload, bytes) else Path(payload).read_bytes()
            with Image.open(io.BytesIO(data)) as im:
                if im.size != (SIDE, SIDE):
                    found = f"a {im.size[0]}x{im.size[1]} image"
                    problems[i] = (key, f"a {SIDE}x{SIDE} image for a CIFAR source", found)
                    continue
                im.load()
                rgb = im if im.mode == "RGB" else im.convert("RGB")
                out[i] = np.frombuffer(rgb.tobytes(), dtype=np.uint8).reshape(SIDE, SIDE, 3)
        except UnidentifiedImageError:
            problems[i] = (
                key,
                "an image file PIL can read",
                "unreadable data (not an image format PIL knows)",
            )
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... for damaged files
            problems[i] = (
                key,
                "an image file PIL can read",
                f"unreadable data ({type(exc).__name__}: {exc})",
            )
    return out, problems


class _Decoder:
    """Decode (key, payload) items in a process pool while the caller is still producing them.

    Use as a context manager; `add` items, then `finish` returns (key -> row, images, key -> problem).
    With one worker, decoding happens inline.
    """

    def __init__(self, num_workers: int, progress: bool, total: int | None = None) -> None:
        self.pool = None
        if num_workers > 1 and (total is None or total > DECODE_CHUNK):
            methods = multiprocessing.get_all_start_methods()
            self.pool = multiprocessing.get_context("fork" if "fork" in methods else None).Pool(num_workers)
        self.bar = tqdm(total=total, unit="img", desc="decode images", disable=not progress)
        self.buffer: list[tuple[str, str | bytes]] = []
        self.pending: list[tuple[list[str], Any]] = []

    def __enter__(self) -> _Decoder:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
        self.bar.close()

    def add(self, key: str, payload: str | bytes) -> None:
        self.buffer.append((key, payload))
        if len(self.buffer) >= DECODE_CHUNK:
            self._flush()

    def _flush(self) -> None:
        if not self.buffer:
            return
        keys = [k for k, _ in self.buffer]
        if self.pool is None:
            self.pending.append((keys, _decode_chunk(self.buffer)))
            self.bar.update(len(keys))
        else:
            self.pending.append((keys, self.pool.apply_async(_decode_chunk, (self.buffer,))))
        self.buffer = []

    def finish(self) -> tuple[dict[str, int], np.ndarray, dict[str, Problem]]:
        self._flush()
        index: dict[str, int] = {}
        arrays: list[np.ndarray] = []
        problems: dict[str, Problem] = {}
        for keys, result in self.pending:
            arr, probs = result if self.pool is None else result.get()
            if self.pool is not None:
                self.bar.update(len(keys))
            for i, key in enumerate(keys):
                index[key] = len(index)
                if i in probs:
                    problems[key] = probs[i]
            arrays.append(arr)
        images = np.concatenate(arrays) if arrays else np.zeros((0, SIDE, SIDE, 3), dtype=np.uint8)
        return index, images, problems


def _assemble(
    class_names: Sequence[str],
    tree: Tree,
    index: Mapping[str, int],
    images: np.ndarray,
    problems: Mapping[str, Problem],
) -> tuple[Split, Split]:
    """Order decoded images class-major (files sorted by name); raise for the first bad image in that order."""
    splits = []
    for split in SPLITS:
        rows: list[int] = []
        labels: list[int] = []
        for label, cls in enumerate(class_names):
            for key in tree[split][cls]:
                if key in problems:
                    raise DataPrepError(*problems[key])
                rows.append(index[key])
                labels.append(label)
        splits.append(Split(images[np.asarray(rows, dtype=np.int64)], np.asarray(labels, dtype=np.int64)))
    return splits[0], splits[1]


def read_image_folder(
    path: str | os.PathLike[str], *, num_workers: int = 2, progress: bool = True
) -> SourceData:
    """Read a folder that holds ``train/<class>/*`` and ``test/<class>/*`` (32x32 images, any PIL format)."""
    root = Path(path)
    files: list[str] = []
    dirs: list[str] = []
    for split in SPLITS:
        top = root / split
        if not top.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            rel = Path(dirpath).relative_to(root).as_posix()
            dirs.extend(f"{rel}/{d}" for d in dirnames)
            files.extend(f"{rel}/{f}" for f in filenames)

    def display(rel: str) -> str:
        return str(root / rel) if rel else str(root)

    class_names, tree = _build_tree(files, dirs, display)
    keys = [key for split in SPLITS for cls in class_names for key in tree[split][cls]]
    with _Decoder(num_workers, progress, total=len(keys)) as decoder:
        for key in keys:
            decoder.add(key, key)  # the key is the file's path; workers read it
        index, images, problems = decoder.finish()
    train, test = _assemble(class_names, tree, index, images, problems)
    return SourceData("image_folder", class_names, train, test)


def _is_candidate(parts: Sequence[str]) -> bool:
    """Could this archive member be an image of the tree (``[top/]split/class/file``)?"""
    if any(p.startswith(".") for p in parts):
        return False
    return (len(parts) == 3 and parts[0] in SPLITS) or (len(parts) == 4 and parts[1] in SPLITS)


def read_image_folder_tar(
    path: str | os.PathLike[str], *, num_workers: int = 2, progress: bool = True, given: str | None = None
) -> SourceData:
    """Read a tar (optionally compressed) of an image-folder tree in one streaming pass.

    The tree may sit at the top of the archive or under exactly one top-level folder. Images are
    decoded by a process pool while the archive is still being read; problems are reported after the
    tree's layout has been validated, for the first bad image in class-major order.
    """
    path = Path(path)
    given = given or str(path)
    files: list[str] = []
    dirs: list[str] = []
    with _Decoder(num_workers, progress) as decoder:
        with _open_tar(path, given) as tar:
            for member in _iter_members(tar, given):
                if member.isdir():
                    dirs.append(member.name)
                elif member.isfile():
                    files.append(member.name)
                    if _is_candidate(member.name.split("/")):
                        decoder.add(f"{given}:{member.name}", _read_member(tar, member, given))
        index, images, problems = decoder.finish()
    names = files + dirs
    prefix = ""
    if not any(n.split("/")[0] in SPLITS for n in names):
        tops = {n.split("/")[0] for n in names if not n.startswith(".")}
        if len(tops) == 1 and any(len(n.split("/")) > 1 and n.split("/")[1] in SPLITS for n in names):
            prefix = tops.pop() + "/"
        else:
            raise DataPrepError(
                given,
                "train/<class>/* and test/<class>/* in the archive (optionally under one top-level folder)",
                f"top-level entries: {', '.join(sorted(tops)[:10]) or 'none'}",
            )
    files = [f[len(prefix) :] for f in files if f.startswith(prefix)]
    dirs = [d[len(prefix) :] for d in dirs if d.startswith(prefix)]

    def display(rel: str) -> str:
        return f"{given}:{prefix}{rel}".rstrip("/") if rel else given

    class_names, tree = _build_tree(files, dirs, display)
    train, test = _assemble(class_names, tree, index, images, problems)
    return SourceData("image_folder", class_names, train, test)


def class_counts(split: Split, num_classes: int) -> list[int]:
    """Number of images per label index."""
    return np.bincount(split.labels, minlength=num_classes).astype(int).tolist()


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_name(name: str) -> str:
    """Return `name` if it is usable as a file-name prefix, else raise DataPrepError."""
    if not _SAFE_NAME.match(name):
        raise DataPrepError(
            "--name", "letters, digits, '.', '_' or '-' (starting with a letter or digit)", repr(name)
        )
    return name
