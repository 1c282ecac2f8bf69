"""Test helpers: the tiny .beton writer (shared with bench/, so it lives in cifar_dist.testing), the real
CIFAR-10 archive's location, a JSON reader."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cifar_dist.testing import write_tiny_betons  # noqa: F401  (tests import it from here)

REPO = Path(__file__).resolve().parent.parent
SHARED_JPEG = Path(os.environ.get("CIFAR10_JPEG", REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))


def read_json(path: Path):
    return json.loads(Path(path).read_text())
