"""The run directory: it explains itself (config, command, versions, git SHA, metrics, events, result).

Layout of `runs/<name>/`:
    config.yaml        the resolved config          command.txt   the command line
    env.json           package versions, git SHA, world size, device
    metrics.jsonl      one JSON object per finished epoch
    events.out.tfevents.*   TensorBoard scalars, hparams, confusion matrix, parameter count
    checkpoints/last   accelerate state + train_state.json (resume)
    checkpoints/best   model.pt: weights of the best validation epoch
    paused.json        {"epoch", "epochs"}: the session stopped at run.stop_after (removed when a session starts)
    result.json        written once, when the run has finished
Only the main process writes here.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from cifar_dist.files import atomic_write_json, atomic_write_text, read_jsonl

PAUSED = "paused.json"  # written when a session stops at run.stop_after


def git_sha() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
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
        rows = [r for r in read_jsonl(self.metrics_path) if r.get("epoch", 0) <= completed_epochs]
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

    def pause(self, epoch: int, epochs: int) -> None:
        """paused.json: this session ended at run.stop_after after `epoch` of `epochs` epochs."""
        if self.is_main:
            atomic_write_json(self.run_dir / PAUSED, {"epoch": epoch, "epochs": epochs})

    def finish(self, result: dict[str, Any]) -> None:
        if not self.is_main:
            return
        atomic_write_json(self.run_dir / "result.json", result)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def start_logger(run_dir: Path, is_main: bool, config_yaml: str, env: dict[str, Any], resumed=None) -> RunLogger:
    """The logger of one session of a run: config, command and env written; after a resume
    (`resumed`: the TrainState loaded), events past its step are purged and metrics rows past its epoch dropped."""
    logger = RunLogger(run_dir, is_main, purge_step=None if resumed is None else resumed.global_step)
    if resumed is not None:
        logger.truncate_metrics(resumed.epoch)
    if is_main:
        (run_dir / PAUSED).unlink(missing_ok=True)  # a new session: no longer paused
    logger.write_start(config_yaml, env)
    return logger


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
