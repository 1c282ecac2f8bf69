"""Reader of image-folder trees ``train/<class>/*`` + ``test/<class>/*``, as a folder or a tar archive.

Images (any format PIL reads, 32x32) are decoded by a thread pool while the tree is still being
listed or the archive read: threads, not forked processes, because the caller may already run threads
(a test session, a training process) and a forked worker can inherit one of their locks held and wait on
it forever. PIL's decoders and zlib release the GIL, so the threads still decode in parallel. Each chunk
of images has a deadline (DECODE_DEADLINE), so a stuck decoder is an error, not a hang.

Class names are the sorted folder names of train/. The rows of each
split are the files in class-major order (classes sorted, files sorted by name) permuted by
``numpy.random.default_rng(ORDER_SEED).permutation(n)``: a class-sorted file would make every
first-N subset one or two classes, while the official archives are already mixed. The manifest
records ``"order": {"shuffled": true, "seed": ORDER_SEED}``.
"""

from __future__ import annotations

import io
import multiprocessing
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .archives import iter_members, open_tar, read_member
from .arrays import SIDE, SPLITS, SourceData, SplitArrays
from .errors import DataPrepError

DECODE_CHUNK = 500  # images per task sent to a decoding thread
DECODE_DEADLINE = 300.0  # s one chunk may take once the caller waits for it (~0.05 s idle: a huge margin)
ORDER_SEED = 0  # seed of the permutation every image-folder split is written in
FOLDER_ORDER = {"shuffled": True, "seed": ORDER_SEED}  # as recorded in the manifest

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

    A payload is the file's bytes or its path. Runs in pool threads, hence no exceptions.
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
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... for damaged files
            unknown = isinstance(exc, UnidentifiedImageError)
            why = "not an image format PIL knows" if unknown else f"{type(exc).__name__}: {exc}"
            problems[i] = (key, "an image file PIL can read", f"unreadable data ({why})")
    return out, problems


class _Decoder:
    """Decode (key, payload) items in a thread pool while the caller is still producing them.

    Use as a context manager; `add` items, then `finish` returns (key -> row, images, key -> problem).
    With one worker, decoding happens inline. The pool's threads are daemons: one stuck past
    DECODE_DEADLINE is left behind with the error and cannot keep the process from exiting.
    """

    def __init__(self, num_workers: int, progress: bool, total: int | None = None) -> None:
        self.pool: ThreadPool | None = None
        if num_workers > 1 and (total is None or total > DECODE_CHUNK):
            self.pool = ThreadPool(num_workers)
        self.bar = tqdm(total=total, unit="img", desc="decode images", disable=not progress)
        self.buffer: list[tuple[str, str | bytes]] = []
        self.pending: list[tuple[list[str], Any]] = []

    def __enter__(self) -> _Decoder:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.terminate()  # never joins a worker thread that is still busy
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

    @staticmethod
    def _wait(keys: list[str], result: Any) -> tuple[np.ndarray, dict[int, Problem]]:
        try:
            return result.get(timeout=DECODE_DEADLINE)
        except multiprocessing.TimeoutError:
            raise DataPrepError(
                keys[0],
                f"{len(keys)} images from here on decoded within {DECODE_DEADLINE:g} s",
                "their decoding thread still busy (a stuck image decoder)",
            ) from None

    def finish(self) -> tuple[dict[str, int], np.ndarray, dict[str, Problem]]:
        self._flush()
        index: dict[str, int] = {}
        arrays: list[np.ndarray] = []
        problems: dict[str, Problem] = {}
        for keys, result in self.pending:
            arr, probs = result if self.pool is None else self._wait(keys, result)
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
) -> SourceData:
    """Raise for the first bad image in class-major order (files sorted by name), then shuffle each split."""
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
        order = np.random.default_rng(ORDER_SEED).permutation(len(rows))
        picked = np.asarray(rows, dtype=np.int64)[order]
        splits.append(SplitArrays(images[picked], np.asarray(labels, dtype=np.int64)[order]))
    return SourceData("image_folder", tuple(class_names), splits[0], splits[1])


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
    return _assemble(class_names, tree, index, images, problems)


def _is_candidate(parts: Sequence[str]) -> bool:
    """Could this archive member be an image of the tree (``[top/]split/class/file``)?"""
    if any(p.startswith(".") for p in parts):
        return False
    return (len(parts) == 3 and parts[0] in SPLITS) or (len(parts) == 4 and parts[1] in SPLITS)


def read_image_folder_tar(
    path: str | os.PathLike[str], *, num_workers: int = 2, progress: bool = True, given: str | None = None
) -> SourceData:
    """Read a tar (optionally compressed) of an image-folder tree in one streaming pass.

    The tree may sit at the top of the archive or under exactly one top-level folder. A bad image is
    reported only once the tree's layout has been validated (the first in class-major order).
    """
    path = Path(path)
    given = given or str(path)
    files: list[str] = []
    dirs: list[str] = []
    with _Decoder(num_workers, progress) as decoder:
        with open_tar(path, given) as tar:
            for member in iter_members(tar, given):
                if member.isdir():
                    dirs.append(member.name)
                elif member.isfile():
                    files.append(member.name)
                    if _is_candidate(member.name.split("/")):
                        decoder.add(f"{given}:{member.name}", read_member(tar, member, given))
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
    return _assemble(class_names, tree, index, images, problems)
