"""The run directory: it explains itself (config, command, versions, git SHA, metrics, events, result).

`RunLogger` writes the files of `runs/<name>/` that `cifar_dist.run_dir` lists (its docstring has the layout).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from cifar_dist.engine.rundir import disk_errors, end_run, mark_begun
from cifar_dist.files import atomic_write_json, atomic_write_text
from cifar_dist.resources import SOURCE_ROOT
from cifar_dist.run_dir import RunDir, read_sweep_json


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=SOURCE_ROOT, capture_output=True, text=True, timeout=5)
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


def _quiet_event_writer_errors() -> None:
    """TensorBoard's writer thread re-raises a write error (a full disk) in the thread that logs next, which
    reports it in one line; its own traceback on stderr would only repeat it."""
    previous = threading.excepthook
    if getattr(previous, "_cifar_dist", False):
        return

    def hook(args):
        if not (issubclass(args.exc_type, OSError) and type(args.thread).__name__ == "_AsyncWriterThread"):
            previous(args)

    hook._cifar_dist = True
    threading.excepthook = hook


class RunLogger:
    """Writes the run directory (main process) and is a no-op elsewhere.

    A write that fails (a full disk) raises `RunDirError`, one line naming the file; metrics.jsonl keeps
    its whole lines and result.json is never half-written."""

    def __init__(self, run_dir: Path, is_main: bool, resumed=None):
        self.run_dir, self.is_main, self.files = run_dir, is_main, RunDir(run_dir)
        self.tb = None
        if is_main:
            earlier = self.files.event_files()
            _quiet_event_writer_errors()
            with disk_errors(run_dir):
                run_dir.mkdir(parents=True, exist_ok=True)
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir))
            if resumed is not None:  # the earlier events up to the checkpoint move into this session's file
                events = kept_events(earlier, resumed.epoch, resumed.global_step)
                with disk_errors(self.files.events):
                    for event in events:
                        self.tb.file_writer.event_writer.add_event(event)  # as it was: step and wall time kept
                    self.tb.flush()
                for path in earlier:
                    path.unlink()

    def write_start(self, config_yaml: str, extra_env: dict[str, Any], step: int = 0) -> None:
        """config.yaml, command.txt and env.json, and the config and the command in TensorBoard's text tab
        (at `step`: 0, or the optimizer step a resumed session starts from). Main process only."""
        command = " ".join([sys.executable, *sys.argv])
        for path, text in ((self.files.config, config_yaml), (self.files.command, command + "\n"),
                           (self.files.env, json.dumps({**environment(), **extra_env}, indent=2) + "\n")):
            with disk_errors(path):
                atomic_write_text(path, text)
        self.text("run/config", code_block(config_yaml), step)
        self.text("run/command", code_block(command), step)

    def log_epoch(self, row: dict[str, Any]) -> None:
        if not self.is_main:
            return
        append_line(self.files.metrics, json.dumps(row))
        for k, v in row.items():  # the step count per epoch would be a chart of a straight line
            if k not in ("epoch", "step") and isinstance(v, (int, float)) and v is not None:
                self.scalar(f"epoch/{k}", v, row["epoch"])
        self._tb("flush")

    def _tb(self, method: str, *args, **kwargs) -> None:
        if self.tb is not None:
            with disk_errors(self.files.events):
                getattr(self.tb, method)(*args, **kwargs)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._tb("add_scalar", tag, value, step)

    def figure(self, tag: str, fig, step: int) -> None:
        self._tb("add_figure", tag, fig, step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self._tb("add_text", tag, text, step)

    def hparams(self, hparams: dict[str, Any], metric_tags: dict[str, str], extra: dict[str, Any] | None = None) -> None:
        """The HParams tab: the sweep's varied keys and a short fixed set (see `hparam_keys`) plus `extra`
        (the parameter count); integers and booleans and strings as text (TensorBoard shows every number
        with four decimals), fractional numbers as numbers.

        `metric_tags` (tag -> column title) name scalar series of this run: HParams shows the last value of
        each, so no metric needs a chart of its own."""
        if self.tb is None:
            return
        from tensorboard.plugins.hparams import plugin_data_pb2
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        shown = {**{k: hparams[k] for k in hparam_keys(self.run_dir, hparams)}, **(extra or {})}
        clean = {k: (v if isinstance(v, float) else _text(v)) for k, v in shown.items()}
        experiment, start, end = hparams_summaries(clean, dict.fromkeys(metric_tags, 0.0))
        meta = experiment.value[0].metadata.plugin_data
        data = plugin_data_pb2.HParamsPluginData.FromString(meta.content)
        for info in data.experiment.metric_infos:  # readable column titles
            info.display_name = metric_tags[info.name.tag]
        meta.content = data.SerializeToString()
        with disk_errors(self.files.events):
            for summary in (experiment, start, end):
                self.tb.file_writer.add_summary(summary)

    def pause(self, epoch: int, epochs: int) -> None:
        """paused.json: this session ended at run.stop_after after `epoch` of `epochs` epochs."""
        if self.is_main:
            atomic_write_json(self.files.paused, {"epoch": epoch, "epochs": epochs})

    def finish(self, result: dict[str, Any]) -> None:
        if not self.is_main:
            return
        with disk_errors(self.files.result):
            atomic_write_json(self.files.result, result)

    def close(self, exit_status: int) -> None:
        """Flush and close the events; record `exit_status` in status.json and let another run take the
        directory (`rundir.end_run`)."""
        if self.tb is not None:
            tb, self.tb = self.tb, None
            with disk_errors(self.files.events):
                tb.close()
        if self.is_main:
            end_run(self.run_dir, exit_status)


def start_logger(run_dir: Path, is_main: bool, config_yaml: str, env: dict[str, Any], resumed=None) -> RunLogger:
    """The logger of one session of a run: config, command and env written, a finished run's result.json
    removed (until this session finishes, the run has none). After a resume (`resumed`: the TrainState
    loaded), metrics rows past its epoch are dropped and the events past its step with them; a fresh start
    (see `rundir.check_fresh`) drops the metrics and events of an attempt that saved no checkpoint. A bad
    metrics.jsonl is refused before anything is changed."""
    if not is_main:
        return RunLogger(run_dir, is_main)
    files, torn = RunDir(run_dir), []
    if resumed is not None:
        rows = files.metrics_rows(on_torn_tail=torn.append)  # FileFormatError (exit 2) before any change
    mark_begun(run_dir)
    with disk_errors(files.result):
        files.result.unlink(missing_ok=True)
        if resumed is None:
            for p in [files.metrics, *files.event_files()]:
                p.unlink(missing_ok=True)
    logger = RunLogger(run_dir, is_main, resumed)
    if resumed is not None and files.metrics.is_file():  # keep the rows of the epochs done
        for line in torn:  # the end of a write cut by a kill or a full disk
            print(f"resume: {files.metrics}: dropped an incomplete last line ({line!r:.60}) left by an "
                f"interrupted write")
        with disk_errors(files.metrics):
            atomic_write_text(files.metrics, "".join(json.dumps(r) + "\n" for r in rows
                                                     if r.get("epoch", 0) <= resumed.epoch))
    files.paused.unlink(missing_ok=True)  # a new session: no longer paused
    logger.write_start(config_yaml, env, 0 if resumed is None else resumed.global_step)
    return logger


def append_line(path: Path, line: str) -> None:
    """Append one line durably; when the write fails (a full disk) the file is cut back to its whole lines."""
    with disk_errors(path, f"{path.name} keeps its earlier lines"):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                data = memoryview((line + "\n").encode())
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)


# The HParams tab: these keys for every run, after the keys a sweep varies.
HPARAMS_FIXED = ("model.name", "optim.name", "optim.lr", "run.global_batch_size", "run.epochs", "preset")


def hparam_keys(run_dir: Path, flat: dict[str, Any]) -> list[str]:
    """The keys a run shows in the HParams tab: the keys its sweep varies (the cells' override keys of
    <run>/../sweep.json when it lists the run, and run.seed when there are several seeds), then
    `HPARAMS_FIXED`."""
    sweep = read_sweep_json(run_dir.parent)
    varied: list[str] = []
    runs = sweep.get("runs") if isinstance(sweep, dict) else None
    listed = isinstance(runs, list) and any(isinstance(r, dict) and r.get("run") == run_dir.name for r in runs)
    if listed and isinstance(sweep.get("cells"), list):
        for cell in sweep["cells"]:
            overrides = cell.get("overrides") if isinstance(cell, dict) else None
            varied += [k for k in (overrides or {}) if k not in varied]
        if isinstance(sweep.get("seeds"), list) and len(sweep["seeds"]) > 1:
            varied.append("run.seed")
    return [k for k in dict.fromkeys([*varied, *HPARAMS_FIXED]) if k in flat]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def code_block(text: str) -> str:
    """Markdown for TensorBoard's text tab that keeps `text` as it is (indented: a code block)."""
    return "\n".join("    " + line for line in text.rstrip("\n").splitlines())


# Event tags whose step is the epoch (the rest count optimizer steps); tags the final evaluation writes.
EPOCH_AXIS, FINAL_TAGS = ("epoch/",), ("test/", "hparam/", "_hparams_/", "run/result")


def kept_events(paths: list[Path], epochs_done: int, global_step: int) -> list:
    """The events of `paths` a resume keeps: per-step tags up to `global_step`, per-epoch tags up to
    `epochs_done`, none of the final evaluation's (the session that finishes writes them). Every point
    logged up to the checkpoint stays, nothing after it does (TensorBoard's purge_step would also drop
    the point logged at the checkpoint's own step, and it cannot tell the epoch axis from the step axis)."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    kept = []
    for path in paths:
        for event in LegacyEventFileLoader(str(path)).Load():
            if not event.HasField("summary"):
                continue  # file version, session logs: the new file has its own
            values = [v for v in event.summary.value if _keep_point(v.tag, event.step, epochs_done, global_step)]
            if values:
                del event.summary.value[:]
                event.summary.value.extend(values)
                kept.append(event)
    return kept


def _keep_point(tag: str, step: int, epochs_done: int, global_step: int) -> bool:
    if tag.startswith(FINAL_TAGS):
        return False
    return step <= (epochs_done if tag.startswith(EPOCH_AXIS) else global_step)


def confusion_figure(confusion, class_names: list[str], title: str):
    """A matplotlib figure of a (K, K) confusion matrix (rows = true class, columns = predicted), with a
    colour bar (images per cell) and `title` (which weights, what accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(class_names)
    fig, ax = plt.subplots(figsize=(0.6 * k + 2, 0.6 * k + 1.5))
    from matplotlib.ticker import MaxNLocator

    im = ax.imshow(confusion, cmap="Blues")
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="test images")
    bar.locator = MaxNLocator(integer=True)  # counts
    bar.update_ticks()
    top = max(max(row) for row in confusion) or 1
    ax.set_title(title, fontsize=9)
    ax.set_xticks(range(k), class_names, rotation=90)
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, int(confusion[i][j]), ha="center", va="center", fontsize=7,
                    color="white" if confusion[i][j] > top / 2 else "black")  # readable on dark cells
    fig.tight_layout()
    return fig
