"""Reading ``.beton`` files written by `data_prep` back, without FFCV, and verifying them.

`read_beton` / `read_labels` parse the file's header, field descriptors, metadata table and allocation
table with numpy (the layout of FFCV's format version 2, `ffcv/types.py` and `ffcv/reader.py`) and copy
(raw) or OpenCV-decode (jpg) the image bytes: importing FFCV costs a trainer ~3.5 s of start-up (its
image field compiles a numba typed dict at import) and sets torch's thread count to 1; reading needs
neither. `tests/test_data_prep.py` checks every array against ``ffcv.reader.Reader`` on the same files.
Writing (`writer.py`) and the FFCV loader (`cifar_dist.data.FFCVLoader`) use FFCV itself.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .arrays import SIDE, SplitArrays
from .errors import DataPrepError

VERIFY_JPEG_SAMPLE = 2048  # images per split compared pixel-wise in jpg mode

# FFCV's on-disk layout (format version 2), little-endian as FFCV writes it.
BETON_VERSION = 2
HEADER = np.dtype([("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"), ("num_samples", "<u8"),
                   ("alloc_table_ptr", "<u8")], align=True)
FIELD_DESC = np.dtype([("type_id", "<u1"), ("name", ("<u1", 16)), ("arguments", ("<u1", (1024,)))], align=True)
ALLOC_ENTRY = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
# The fields data_prep writes: FFCV type id -> per-sample metadata (IntField: the value; RGBImageField: where
# the image is and how it is stored, mode 0 jpg / 1 raw).
FIELD_META = {1: ("IntField", np.dtype("<i8")),
              2: ("RGBImageField", np.dtype([("mode", "<u1"), ("width", "<u2"), ("height", "<u2"),
                                             ("data_ptr", "<u8")]))}
EXPECTED_FIELDS = {"image": 2, "label": 1}
READABLE = "a readable .beton file"


class Beton(NamedTuple):
    """A parsed beton: per-sample image and label metadata, and the allocation table (sample, ptr, size)."""

    images: np.ndarray
    labels: np.ndarray
    alloc_table: np.ndarray


def ffcv_version() -> str:
    """The installed FFCV distribution version (ffcv.__version__ is wrong in 1.0.2)."""
    try:
        return importlib.metadata.version("ffcv")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - ffcv is a dependency
        return "unknown"


def open_beton(path: Path) -> Beton:
    """Parse a beton's tables (not its image bytes); DataPrepError on anything but data_prep's two fields."""
    try:
        size = path.stat().st_size
        header = np.fromfile(path, dtype=HEADER, count=1)
        if len(header) != 1:
            raise DataPrepError(path, READABLE, f"{size} bytes, shorter than its header")
        version, n_fields, n = (int(header[0][k]) for k in ("version", "num_fields", "num_samples"))
        if version != BETON_VERSION:
            raise DataPrepError(path, READABLE, f"format version {version} (FFCV's is {BETON_VERSION})")
        descs = np.fromfile(path, dtype=FIELD_DESC, count=n_fields, offset=HEADER.itemsize)
        names = [bytes(d["name"]).split(b"\0")[0].decode("ascii", "replace") for d in descs]
        types = [int(d["type_id"]) for d in descs]
        if len(descs) != n_fields or dict(zip(names, types)) != EXPECTED_FIELDS:
            found = ", ".join(f"{name} ({FIELD_META.get(t, (f'type {t}',))[0]})" for name, t in zip(names, types))
            raise DataPrepError(path, "fields image (RGBImageField) and label (IntField)", f"fields {found or 'none'}")
        meta_type = np.dtype([("", FIELD_META[t][1]) for t in types], align=True)
        meta = np.fromfile(path, dtype=meta_type, count=n, offset=HEADER.itemsize + descs.nbytes)
        table_at = int(header[0]["alloc_table_ptr"])
        table = np.fromfile(path, dtype=ALLOC_ENTRY, offset=table_at) if table_at <= size else None
    except OSError as exc:
        raise DataPrepError(path, READABLE, f"an error ({type(exc).__name__}: {exc})") from exc
    if len(meta) != n or table is None or len(table) < n:
        raise DataPrepError(path, READABLE, f"a truncated file ({size} bytes for {n} samples)")
    return Beton(meta[f"f{names.index('image')}"], meta[f"f{names.index('label')}"], table)


def read_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """All labels (N,) int64 of a beton written here, straight from its metadata table."""
    return np.asarray(open_beton(Path(path)).labels, dtype=np.int64).reshape(-1)


def read_beton(
    path: str | os.PathLike[str], indices: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read images (N, 32, 32, 3) uint8 RGB and labels (N,) int64 back from a beton written here, as the
    module docstring explains (no FFCV import, no JIT, no workers); `indices` selects rows (default: all)."""
    path = Path(path)
    beton = open_beton(path)
    img_meta, label_meta = beton.images, beton.labels
    rows = np.arange(len(img_meta)) if indices is None else np.asarray(indices, dtype=np.int64)
    labels = np.asarray(label_meta[rows], dtype=np.int64).reshape(-1)
    table = np.sort(beton.alloc_table, order="ptr")
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
