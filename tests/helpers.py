"""Test helpers: the tiny .beton writer (shared with bench/, so it lives in cifar_dist.testing), the real
CIFAR-10 archive's location, a JSON reader, a small tmpfs for disk-full cases, a free port and the two-process
CPU launch line."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from cifar_dist.testing import write_tiny_betons  # noqa: F401  (tests import it from here)

REPO = Path(__file__).resolve().parent.parent
SHARED_JPEG = Path(os.environ.get("CIFAR10_JPEG", REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))


def free_port() -> int:
    """A TCP port nobody listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_cpu_two() -> list[str]:
    """`accelerate launch` of two gloo processes (launch/cpu.yaml) on a port of their own: two tests launching at
    once in two xdist workers would otherwise both ask torchrun's default 29500 (EADDRINUSE)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch" / "cpu.yaml"),
            "--main_process_port", str(free_port())]


def read_json(path: Path):
    return json.loads(Path(path).read_text())


@contextlib.contextmanager
def small_tmpfs(mnt: Path, megabytes: int) -> Iterator[Path]:
    """A tmpfs of `megabytes` MB mounted at `mnt` (created) for a disk-full case, unmounted after it. Needs root
    with CAP_SYS_ADMIN, as CI has: without it the test fails and says why, never skips."""
    import pytest

    mnt.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(mnt)], capture_output=True,
                       text=True)
    if p.returncode != 0:
        pytest.fail(f"cannot mount a {megabytes} MB tmpfs for a disk-full test (needs root with CAP_SYS_ADMIN): "
                    f"{(p.stderr or p.stdout).strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
