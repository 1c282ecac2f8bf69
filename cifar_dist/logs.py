"""The run directory: it explains itself (config, command, versions, git SHA, metrics, events, result).

Layout of `runs/<name>/`:
    config.yaml        the resolved config          command.txt   the command line
    env.json           package versions, git SHA, world size, device
    metrics.jsonl      one JSON object per finished epoch
    events.out.tfevents.*   TensorBoard scalars, hparams, confusion matrix, parameter count
    checkpoints/last   accelerate state + train_state.json (resume)
    checkpoints/best   model.pt: weights of the best validation epoch
    result.json        written once, when the run has finished
Only the main process writes here.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; run files are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def git_sha() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "torchvision", "accelerate", "timm", "ffcv", "numpy", "fire", "tensorboard"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions, "git_sha": git_sha()}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl -> list of dicts; raises ValueError naming the line that is not JSON."""
    rows = []
    if not path.is_file():
        return rows
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: expected one JSON object per line, found {line[:60]!r}") from e
    return rows


class RunLogger:
    """Writes the run directory (main process) and is a no-op elsewhere."""

    def __init__(self, run_dir: Path, is_main: bool, purge_step: int | None = None):
        self.run_dir, self.is_main = run_dir, is_main
        self.metrics_path = run_dir / "metrics.jsonl"
        self.tb = None
        if is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir), purge_step=purge_step)

    def write_start(self, config_yaml: str, extra_env: dict[str, Any]) -> None:
        if not self.is_main:
            return
        atomic_write_text(self.run_dir / "config.yaml", config_yaml)
        atomic_write_text(self.run_dir / "command.txt", " ".join([sys.executable, *sys.argv]) + "\n")
        atomic_write_json(self.run_dir / "env.json", {**environment(), **extra_env})

    def truncate_metrics(self, completed_epochs: int) -> None:
        """Keep only the rows of epochs 1..completed_epochs (a resume replays the rest)."""
        if not self.is_main or not self.metrics_path.is_file():
            return
        rows = [r for r in read_metrics(self.metrics_path) if r.get("epoch", 0) <= completed_epochs]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    def log_epoch(self, row: dict[str, Any]) -> None:
        if not self.is_main:
            return
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for k, v in row.items():
            if k != "epoch" and isinstance(v, (int, float)) and v is not None:
                self.tb.add_scalar(f"epoch/{k}", v, row["epoch"])
        self.tb.flush()

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.tb is not None:
            self.tb.add_scalar(tag, value, step)

    def figure(self, tag: str, fig, step: int) -> None:
        if self.tb is not None:
            self.tb.add_figure(tag, fig, step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.tb is not None:
            self.tb.add_text(tag, text, step)

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        if self.tb is None:
            return
        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        self.tb.add_hparams(clean, {f"hparam/{k}": v for k, v in metrics.items() if v is not None}, run_name=".")

    def finish(self, result: dict[str, Any]) -> None:
        if not self.is_main:
            return
        atomic_write_json(self.run_dir / "result.json", result)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def confusion_figure(confusion, class_names: list[str]):
    """A matplotlib figure of a (K, K) confusion matrix (rows = true class, columns = predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(class_names)
    fig, ax = plt.subplots(figsize=(0.6 * k + 2, 0.6 * k + 1.5))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(k), class_names, rotation=90)
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, int(confusion[i][j]), ha="center", va="center", fontsize=7)
    fig.tight_layout()
    return fig
