"""Reading ``.beton`` files written by `data_prep` back, without an FFCV Loader, and verifying them.

`read_beton` / `read_labels` use ``ffcv.reader.Reader`` for the header, metadata and allocation table
and copy (raw) or OpenCV-decode (jpg) the image bytes themselves: no Loader, so no JIT warm-up, no
worker processes and no fork hazard. Importing FFCV sets torch's thread count to 1; `ffcv_modules`
restores the previous value.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .arrays import SIDE, SplitArrays
from .errors import DataPrepError

VERIFY_JPEG_SAMPLE = 2048  # images per split compared pixel-wise in jpg mode


def ffcv_modules() -> ModuleType:
    """Import ffcv's writer, fields and reader, undoing its side effect on torch's thread count."""
    threads = None
    if "ffcv" not in sys.modules:
        import torch

        threads = torch.get_num_threads()
    import ffcv
    import ffcv.fields
    import ffcv.reader
    import ffcv.writer

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return ffcv


def ffcv_version() -> str:
    """The installed FFCV distribution version (ffcv.__version__ is wrong in 1.0.2)."""
    try:
        return importlib.metadata.version("ffcv")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - ffcv is a dependency
        return "unknown"


def _open_beton(path: Path) -> tuple[Any, np.ndarray, np.ndarray]:
    """Open a beton with ffcv.reader.Reader; return (reader, image metadata, label metadata)."""
    ffcv = ffcv_modules()
    try:
        reader = ffcv.reader.Reader(str(path))
    except Exception as exc:  # the reader raises assorted types on a bad header
        raise DataPrepError(
            path, "a readable .beton file", f"an error ({type(exc).__name__}: {exc})"
        ) from exc
    names = list(reader.field_names)
    if sorted(names) != ["image", "label"] or not isinstance(
        reader.handlers["image"], ffcv.fields.RGBImageField
    ):
        raise DataPrepError(
            path, "fields image (RGBImageField) and label (IntField)", f"fields {', '.join(names)}"
        )
    meta = reader.metadata
    return reader, meta[f"f{names.index('image')}"], meta[f"f{names.index('label')}"]


def read_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """All labels (N,) int64 of a beton written here, straight from its metadata table."""
    _, _, label_meta = _open_beton(Path(path))
    return np.asarray(label_meta, dtype=np.int64).reshape(-1)


def read_beton(
    path: str | os.PathLike[str], indices: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read images (N, 32, 32, 3) uint8 RGB and labels (N,) int64 back from a beton written here.

    Uses ``ffcv.reader.Reader`` for the header, metadata and allocation table and copies (raw) or
    OpenCV-decodes (jpg) the image bytes itself: no Loader, no JIT, no worker processes.
    `indices` selects rows (default: all).

    Raises:
        DataPrepError: the file is not a beton with ``image`` (RGBImageField) and ``label`` fields.
    """
    path = Path(path)
    reader, img_meta, label_meta = _open_beton(path)
    rows = np.arange(len(img_meta)) if indices is None else np.asarray(indices, dtype=np.int64)
    labels = np.asarray(label_meta[rows], dtype=np.int64).reshape(-1)
    table = np.sort(reader.alloc_table, order="ptr")
    data = np.memmap(path, dtype=np.uint8, mode="r")
    images = np.empty((len(rows), SIDE, SIDE, 3), dtype=np.uint8)
    cv2 = None
    for out_ix, row in enumerate(rows):
        m = img_meta[row]
        h, w, ptr = int(m["height"]), int(m["width"]), int(m["data_ptr"])
        if (h, w) != (SIDE, SIDE):
            raise DataPrepError(path, f"{SIDE}x{SIDE} images", f"{w}x{h} at row {row}")
        if int(m["mode"]) == 1:  # raw: HWC RGB bytes
            images[out_ix] = np.asarray(data[ptr : ptr + SIDE * SIDE * 3]).reshape(SIDE, SIDE, 3)
        else:  # jpg: FFCV encodes with OpenCV from BGR
            if cv2 is None:
                import cv2
            size = int(table["size"][np.searchsorted(table["ptr"], ptr)])
            bgr = cv2.imdecode(np.asarray(data[ptr : ptr + size]), cv2.IMREAD_COLOR)
            if bgr is None or bgr.shape != (SIDE, SIDE, 3):
                raise DataPrepError(path, "a decodable JPEG image", f"undecodable data at row {row}")
            images[out_ix] = bgr[:, :, ::-1]
    return images, labels


def _jpeg_roundtrip_error(images: np.ndarray, quality: int) -> float:
    """Mean absolute difference JPEG compression at `quality` causes on `images` (OpenCV codec)."""
    import cv2

    total = 0.0
    for img in images:
        ok, enc = cv2.imencode(".jpg", img[:, :, ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), quality])
        dec = cv2.imdecode(enc, cv2.IMREAD_COLOR)[:, :, ::-1]
        total += float(np.abs(dec.astype(np.int16) - img.astype(np.int16)).mean())
    return total / max(1, len(images))


def verify_split(
    path: str | os.PathLike[str], split: SplitArrays, *, mode: str, jpeg_quality: int, shown: str | None = None
) -> dict:
    """Check a written beton against the source split; return a small report dict.

    Checks: sample count, every label, and pixels — raw: every image bit-exact; jpg: on up to
    VERIFY_JPEG_SAMPLE evenly spaced images, mean absolute difference <= 1.25 * (the error an
    OpenCV JPEG round trip at the same quality causes) + 0.5.

    Raises:
        DataPrepError: naming `shown` (default `path`) and the first mismatch.
    """
    shown = shown or str(path)
    all_labels = read_labels(path)
    n = len(all_labels)
    if n != len(split):
        raise DataPrepError(shown, f"{len(split)} images (as in the source)", f"{n} images")
    rows = (
        np.arange(n)
        if mode == "raw"
        else np.unique(np.linspace(0, n - 1, min(n, VERIFY_JPEG_SAMPLE)).astype(np.int64))
    )
    bad = np.flatnonzero(all_labels != split.labels)
    if bad.size:
        i = int(bad[0])
        raise DataPrepError(
            shown,
            "labels identical to the source",
            f"{bad.size} different (first at row {i}: {all_labels[i]} vs {split.labels[i]})",
        )
    images, _ = read_beton(path, rows)
    src = split.images[rows]
    report: dict[str, Any] = {"images": n, "labels_checked": n, "pixels_checked_images": int(len(rows))}
    if mode == "raw":
        diff = np.flatnonzero((images != src).reshape(len(rows), -1).any(axis=1))
        if diff.size:
            raise DataPrepError(
                shown,
                "pixels identical to the source (raw mode)",
                f"{diff.size} different images (first at row {int(rows[diff[0]])})",
            )
        report["max_abs_diff"] = 0
    else:
        mad = float(np.abs(images.astype(np.int16) - src.astype(np.int16)).mean()) if len(rows) else 0.0
        bound = 1.25 * _jpeg_roundtrip_error(src, jpeg_quality) + 0.5
        if mad > bound:
            raise DataPrepError(
                shown,
                f"mean absolute pixel difference <= {bound:.2f} (jpg quality {jpeg_quality})",
                f"{mad:.2f}",
            )
        report.update(mean_abs_diff=round(mad, 4), bound=round(bound, 4))
    return report
