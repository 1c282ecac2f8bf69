"""The manifest written next to the two ``.beton`` files, and the up-to-date check it serves.

The manifest records the options and source fingerprint that produced the files, per-split and
per-class counts, the row order, and each file's size and sha256. Existing outputs are up to date
only when the options, the source's sha256 and the sha256 of each ``.beton`` as found on disk all
match what the manifest recorded: a file changed in place, even at the same size, is rewritten.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np

from cifar_dist.files import read_json_or_none

from .arrays import SIDE, SPLITS, SourceData
from .beton import ffcv_version
from .download import file_digest
from .options import PrepOptions
from .sources import SourceSpec, write_order

MANIFEST_VERSION = 2  # 2: .beton sha256 compared on re-runs; image folders written shuffled


def manifest_options(spec: SourceSpec, opts: PrepOptions, name: str, sha: str) -> dict[str, Any]:
    """The manifest entries that decide whether existing outputs are up to date."""
    return {
        "format_version": MANIFEST_VERSION,
        "name": name,
        "dataset": spec.dataset,
        "labels": opts.labels if spec.dataset == "cifar100" else None,
        "write_mode": opts.mode,
        "jpeg_quality": opts.jpeg_quality if opts.mode == "jpg" else None,
        "image_resolution": SIDE,
        "source_sha256": sha,
        "order": write_order(spec),
    }


def up_to_date(paths: dict[str, Path], options: dict[str, Any]) -> dict | None:
    """The existing manifest if it matches `options` and both betons match its sizes and sha256, else None."""
    manifest = read_json_or_none(paths["manifest"])
    if not isinstance(manifest, dict) or any(manifest.get(k) != v for k, v in options.items()):
        return None
    for split in SPLITS:
        entry = (manifest.get("files") or {}).get(split) or {}
        path = paths[split]
        if not path.is_file() or path.stat().st_size != entry.get("bytes"):
            return None
        if file_digest(path, "sha256") != entry.get("sha256"):
            return None
    return manifest


def file_entries(temps: dict[str, Path], finals: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """The manifest's "files": final name, size and sha256 of each written (temporary) beton."""
    return {
        split: {"path": finals[split].name, "bytes": temps[split].stat().st_size,
                "sha256": file_digest(temps[split], "sha256")}
        for split in SPLITS
    }


def build_manifest(
    data: SourceData,
    spec: SourceSpec,
    options: dict[str, Any],
    files: dict[str, dict[str, Any]],
    verification: dict[str, Any] | None,
    seconds: dict[str, float],
) -> dict[str, Any]:
    """The whole manifest of a conversion (see the module docstring)."""
    per_class = {
        split: np.bincount(data.split(split).labels, minlength=len(data.class_names)) for split in SPLITS
    }
    source = spec.origin if spec.origin != spec.given else str(Path(spec.given).expanduser().resolve())
    return {
        **options,
        "class_names": list(data.class_names),
        "num_classes": len(data.class_names),
        "counts": {
            split: {
                "total": len(data.split(split)),
                "per_class": {c: int(k) for c, k in zip(data.class_names, per_class[split])},
            }
            for split in SPLITS
        },
        "image_shape": [SIDE, SIDE, 3],
        "fields": {
            "image": {
                "type": "RGBImageField",
                "write_mode": options["write_mode"],
                "jpeg_quality": options["jpeg_quality"],
                "max_resolution": SIDE,
            },
            "label": {"type": "IntField"},
        },
        "files": files,
        "source": source,
        "source_kind": spec.kind,
        "ffcv_version": ffcv_version(),
        "verified": verification is not None,
        "verification": verification,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "created_utc": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
