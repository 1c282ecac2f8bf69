"""The first-GPU check (run through bench/gpu_check.sh): what a CPU cannot prove, on one real GPU, in <= 5 minutes.

    bash bench/gpu_check.sh [--data_dir data] [--name cifar10] [--out DIR] [--launch launch/1gpu.yaml]
                            [--budget_s 300] [--row_timeout_s N] [--device cuda:0] [--trainer SCRIPT.py]

Rows, each printed the moment it ends (status, images/s, seconds, note):
1. Loaders on the device: FFCV (training and evaluation pipelines) and the tensor loader, one timed epoch each
   after a warm-up; the device of every image and label batch is asserted.
2. `fast` for 10 epochs in bf16 under `accelerate launch --config_file launch/1gpu.yaml`: test accuracy, TTA
   accuracy, training seconds (timed inside the trainer, device synchronised) and seconds from the trainer's
   launch to the end of its first optimizer step; then the same with `--model.compile=true`, and on the FFCV
   loader (`--data.loader=ffcv`).
3. SIGTERM to the launcher in the middle of epoch 2 of a 3-epoch `fast` run: the trainer must checkpoint
   mid-epoch and stop ("stopped by signal"); `--resume=auto` must finish with every epoch once in metrics.jsonl.
4. Every other preset for one epoch on a class-balanced cut of 5,000 training images (several at once).
A trainer that exits (or outlives its row's time) ends its row at once, and the row shows the last 20 lines of
its log. Rows share one budget (`--budget_s`); a row gets at most what is left. Exit status: 0 every row passed,
1 a row failed, 2 no usable GPU or no data (nothing run).

`--device=cpu --trainer=SCRIPT.py` runs the same logic without a GPU (the loaders on the CPU, SCRIPT.py in place
of the trainer, started directly): how the fail-fast paths are tested.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # a source checkout's cifar_dist, here and (PYTHONPATH) in the launched trainers
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
EXIT_NO_GPU = 2
TAIL_LINES = 20
CUT = 5000  # training images of a preset row
# Seconds a row may take at most (on an H200: fast 10 epochs ~ 30 s with its start; compile adds its compile).
ROW_TIMEOUT_S = {"fast": 90, "compile": 150, "ffcv": 90, "sigterm": 90, "resume": 60, "preset": 120}
MIN_FAST_TTA = 85.0  # % test accuracy with TTA below which a 10-epoch `fast` row fails (it reaches ~90.5)


def fail(msg: str) -> int:
    print(f"gpu_check: {msg}", file=sys.stderr, flush=True)
    return EXIT_NO_GPU


class Report:
    """Prints each row the moment it ends (under a lock: preset rows end from several threads) and keeps them."""

    head = f"{'check':<40} {'status':<7} {'images/s':>10} {'seconds':>8}  note"

    def __init__(self, budget_s: float):
        self.rows: list[dict] = []
        self.lock = threading.Lock()
        self.deadline = time.monotonic() + budget_s
        print(self.head + "\n" + "-" * len(self.head), flush=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def add(self, row: dict) -> dict:
        ips = f"{row['images_per_s']:,.0f}" if row.get("images_per_s") else "-"
        line = f"{row['check']:<40} {row['status']:<7} {ips:>10} {row.get('seconds', 0):>8.1f}  {row.get('note', '')}"
        tail = "".join(f"    | {x}\n" for x in row.get("tail", []))
        with self.lock:
            self.rows.append(row)
            print(line + ("\n" + tail.rstrip("\n") if tail else ""), flush=True)
        return row

    def ok(self) -> bool:
        return bool(self.rows) and all(r["status"] == "ok" for r in self.rows)


def loader_rows(report: Report, data_dir: Path, name: str, device_name: str) -> None:
    """One epoch of each loader on the device after a warm-up epoch; every batch's device asserted."""
    import torch

    from cifar_dist.config import AugConfig, DataConfig
    from cifar_dist.data import FFCVLoader, Order, Split, TensorLoader, read_images, usable_cpus
    from cifar_dist.dataset import open_dataset

    device = torch.device(device_name)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    data = open_dataset(DataConfig(dir=str(data_dir), name=name, val_size=0))  # every row of both files
    train_path, test_path = data.train_path, data.test_path
    workers = max(1, usable_cpus())
    bs = min(512, max(1, len(data.test_rows) // 4))  # full batches on a small data set too
    fast_aug = AugConfig(crop_padding=2, crop_pad="reflect", flip=True, flip_mode="alternating")
    makers = {
        "loader ffcv train": lambda: FFCVLoader(Split(train_path), batch_size=bs, device=device,
                                                order=Order(train=True), aug=fast_aug, num_workers=workers),
        "loader ffcv eval": lambda: FFCVLoader(Split(test_path), batch_size=2 * bs, device=device, num_workers=workers),
        "loader tensor train": lambda: TensorLoader(*read_images(train_path), batch_size=bs, device=device,
                                                    order=Order(train=True), aug=fast_aug),
    }
    for check, make in makers.items():
        t0 = time.perf_counter()
        try:
            loader = make()
            for epoch in range(2):  # epoch 0 warms up (FFCV's JIT compile, CUDA context); epoch 1 is timed
                loader.set_epoch(epoch)
                sync()
                t_epoch, n = time.perf_counter(), 0
                for x, y in loader:
                    if x.device != device or y.device != device:
                        raise AssertionError(f"batch on images {x.device}, labels {y.device}; expected {device}")
                    n += y.numel()
                sync()
                ips = n / (time.perf_counter() - t_epoch)
                if n == 0:
                    raise AssertionError("the loader yielded no batch")
            row = {"check": check, "status": "ok", "images_per_s": ips, "note": f"{n} images on {device}"}
        except Exception as e:  # a check fails; the others still run
            row = {"check": check, "status": "FAILED", "note": f"{type(e).__name__}: {e}"}
        row["seconds"] = time.perf_counter() - t0
        report.add(row)


def tail(log: Path, n: int = TAIL_LINES) -> list[str]:
    try:
        with open(log, errors="replace") as f:
            return [x.rstrip("\n") for x in deque(f, maxlen=n)]
    except OSError:
        return []


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGKILL the trainer's process group (it was started in a session of its own) and reap it."""
    if _group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class Runner:
    """Starts `fast` (or a preset) under `accelerate launch --config_file <launch>`, or `--trainer SCRIPT.py`
    directly, one output folder per run, and turns each run into a row."""

    def __init__(self, report: Report, py: str, launch: Path, data_dir: Path, name: str, out: Path,
                 trainer: str | None, row_timeout_s: float | None):
        self.report, self.py, self.launch, self.data_dir, self.name, self.out = report, py, launch, data_dir, name, out
        self.trainer, self.row_timeout_s = trainer, row_timeout_s

    def cmd(self, run: str, *extra: str, preset: str = "fast") -> list[str]:
        head = ([self.py, self.trainer] if self.trainer else
                [self.py, "-m", "accelerate.commands.launch", "--config_file", str(self.launch), "-m", "cifar_dist.train"])
        return [*head, f"--preset={preset}", "--run.mixed_precision=bf16", f"--data.dir={self.data_dir}",
                f"--data.name={self.name}", f"--run.out_dir={self.out}", f"--run.name={run}", "--run.progress=false",
                *extra]

    def timeout(self, kind: str) -> float:
        return max(0.0, min(self.row_timeout_s or ROW_TIMEOUT_S[kind], self.report.left()))

    def start(self, cmd: list[str], log: Path) -> subprocess.Popen:
        f = open(log, "w")
        try:
            return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        finally:
            f.close()  # the child holds its own copy

    def wait(self, proc: subprocess.Popen, timeout: float, until=None) -> str:
        """Until the process exits ("exited"), `until()` is true ("until") or the time is up ("timeout")."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if proc.poll() is not None:
                return "exited"
            if until is not None and until():
                return "until"
            time.sleep(0.1)
        return "exited" if proc.poll() is not None else "timeout"

    def result(self, run: str) -> dict:
        p = self.out / run / "result.json"
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return {}

    def run_row(self, check: str, run: str, kind: str, *extra: str, preset: str = "fast",
                min_tta: float | None = None) -> dict:
        """One trainer run to its end (or its time limit): ok when it exits 0 with a finished result.json."""
        log = self.out / f"{run}.log"
        t0 = time.perf_counter()
        limit = self.timeout(kind)
        if limit <= 0:
            return self.report.add({"check": check, "status": "FAILED", "seconds": 0.0,
                                    "note": "not run: the check's time budget is spent"})
        proc = self.start(self.cmd(run, *extra, preset=preset), log)
        how = self.wait(proc, limit)
        if how == "timeout":
            _stop_group(proc)
        seconds = time.perf_counter() - t0
        return self.report.add(self.row(check, run, proc.returncode, how, seconds, log, limit, min_tta))

    def row(self, check: str, run: str, rc: int | None, how: str, seconds: float, log: Path, limit: float,
            min_tta: float | None = None) -> dict:
        res = self.result(run)
        final = res.get("final") or {}
        ok = how == "exited" and rc == 0 and res.get("status") == "finished"
        if how == "timeout":
            note = f"stopped after {limit:.3g} s (the row's time), log {log}"
        elif not ok:
            note = f"trainer exited {rc}" + (f" (result status {res['status']})" if res.get("status") else "") + \
                f", log {log}"
        else:
            parts = [f"test acc {final.get('test_acc', float('nan')):.2f}%",
                     f"tta {final.get('test_acc_tta', float('nan')):.2f}%"]
            if res.get("train_s") is not None:
                parts.append(f"train {res['train_s']:.2f} s")
            if res.get("first_step_s") is not None:
                parts.append(f"launch to first step {res['first_step_s']:.1f} s")
            note = ", ".join(parts)
            if min_tta is not None and not final.get("test_acc_tta", 0.0) >= min_tta:
                ok, note = False, note + f"; expected tta >= {min_tta:.1f}%"
        row = {"check": check, "status": "ok" if ok else "FAILED", "images_per_s": res.get("images_per_s"),
               "seconds": seconds, "note": note}
        if not ok:
            row["tail"] = tail(log)
        return row

    def sigterm_then_resume(self, epochs: int = 3) -> None:
        """TERM to the launcher (only) in the middle of epoch 2 of `epochs`, then --resume=auto."""
        run, log = "fast_sigterm", self.out / "fast_sigterm.log"
        t0 = time.perf_counter()
        limit = self.timeout("sigterm")
        if limit <= 0:
            self.report.add({"check": "SIGTERM mid-epoch (1gpu launcher)", "status": "FAILED", "seconds": 0.0,
                             "note": "not run: the check's time budget is spent"})
            return
        # batch 128: ~390 steps an epoch, long enough on a fast GPU to land the signal inside epoch 2
        small = ("--run.global_batch_size=128", "--run.log_every_steps=20")
        proc = self.start(self.cmd(run, f"--run.epochs={epochs}", *small), log)
        epoch_line: list[str] = []

        def first_epoch_done() -> bool:
            epoch_line[:] = [x for x in tail(log, 200) if x.startswith("epoch=1 ")][:1]
            return bool(epoch_line)

        how = self.wait(proc, limit, until=first_epoch_done)
        note, rc = "", None
        if how == "until":
            row = dict(kv.split("=", 1) for kv in epoch_line[0].split() if "=" in kv)
            time.sleep(max(0.2, float(row.get("epoch_s", 2)) / 2))  # about the middle of epoch 2
            proc.send_signal(signal.SIGTERM)  # the launcher only: it must pass it on
            how = self.wait(proc, max(1.0, min(60.0, self.report.left())))
        if how == "timeout":
            note = ("epoch 1 never ended; " if not epoch_line else "no exit after SIGTERM; ")
            _stop_group(proc)
        rc = proc.returncode
        time.sleep(1)
        stray = _group_alive(proc.pid)
        if stray:  # a launcher that does not forward TERM leaves its trainer running: stop it
            os.killpg(proc.pid, signal.SIGKILL)
        state_file = self.out / run / "checkpoints" / "last" / "train_state.json"
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            state = {}
        stopped = any("stopped by signal" in x for x in tail(log, 200))
        ok = bool(epoch_line) and stopped and state.get("step_in_epoch", 0) > 0 and not stray
        note += (f"launcher exit {rc}; " + ("trainer left running (TERM not forwarded); " if stray else "")
                 + (f"checkpoint at epoch {state.get('epoch', 0) + 1} step {state.get('step_in_epoch')}" if state
                    else "no checkpoint"))
        row = {"check": "SIGTERM mid-epoch (1gpu launcher)", "status": "ok" if ok else "FAILED",
               "seconds": time.perf_counter() - t0, "note": note}
        if not ok:
            row["tail"] = tail(log)
        self.report.add(row)
        if not ok:
            return  # nothing to resume from
        t1 = time.perf_counter()
        rlog = self.out / "fast_resume.log"
        limit = self.timeout("resume")
        proc = self.start(self.cmd(run, f"--run.epochs={epochs}", *small, "--resume=auto"), rlog)
        how = self.wait(proc, limit)
        if how == "timeout":
            _stop_group(proc)
        row = self.row("resume after SIGTERM", run, proc.returncode, how, time.perf_counter() - t1, rlog, limit)
        metrics = self.out / run / "metrics.jsonl"
        seen = [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()] if metrics.is_file() else []
        if row["status"] == "ok" and seen != list(range(1, epochs + 1)):
            row["status"], row["note"] = "FAILED", f"metrics.jsonl epochs {seen}, expected 1..{epochs} once each"
        self.report.add(row)


def preset_rows(runner: Runner, workers: int = 3) -> None:
    """Every preset but `fast` for one epoch on a balanced cut of CUT images, `workers` at a time on the GPU."""
    from cifar_dist.presets import PRESETS, get_preset

    def one(name: str) -> None:
        val = get_preset(name).data.val_size
        extra = ["--run.epochs=1", f"--data.limit_train={CUT}", "--data.limit_test=2000"]
        if val:
            extra.append(f"--data.val_size={min(val, CUT // 10)}")
        runner.run_row(f"{name} 1 epoch, {CUT} images", f"preset_{name}", "preset", *extra, preset=name)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, [p for p in sorted(PRESETS) if p != "fast"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/gpu_check.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data_dir", default=str(REPO / "data"))
    ap.add_argument("--name", default="cifar10")
    ap.add_argument("--out", default="")
    ap.add_argument("--launch", default=str(REPO / "launch" / "1gpu.yaml"))
    ap.add_argument("--budget_s", type=float, default=300.0, help="seconds for the whole check")
    ap.add_argument("--row_timeout_s", type=float, default=None, help="seconds per trainer row (default: per row)")
    ap.add_argument("--device", default="cuda:0", help="where the loader rows run (cpu: the logic without a GPU)")
    ap.add_argument("--trainer", default=None, help="a script run in place of the trainer (tests)")
    ap.add_argument("--skip", default="", help="row groups to leave out, comma-separated: loaders, fast, sigterm, presets")
    a = ap.parse_args(argv)
    import torch

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        try:
            seen = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout.split("\n")[0]
        except (OSError, subprocess.SubprocessError):
            seen = ""
        return fail(f"no usable GPU (torch.cuda.is_available() is False with torch {torch.__version__}, CUDA "
                    f"{torch.version.cuda}{'; nvidia-smi lists: ' + seen if seen else ''}); this check needs one "
                    f"CUDA GPU; nothing was run")
    data_dir = Path(a.data_dir)
    if not (data_dir / f"{a.name}_train.beton").is_file() or not (data_dir / f"{a.name}_test.beton").is_file():
        return fail(f"{data_dir}/{a.name}_{{train,test}}.beton not found: run `make data` (or pass --data_dir)")
    out = Path(a.out or tempfile.mkdtemp(prefix="gpu_check_"))
    out.mkdir(parents=True, exist_ok=True)
    what = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else a.device
    print(f"gpu_check: {what}, torch {torch.__version__}, budget {a.budget_s:.0f} s, output in {out}", flush=True)
    report = Report(a.budget_s)
    t0 = time.perf_counter()
    skip = set(filter(None, a.skip.split(",")))
    if "loaders" not in skip:
        loader_rows(report, data_dir, a.name, a.device)
    runner = Runner(report, sys.executable, Path(a.launch), data_dir, a.name, out, a.trainer, a.row_timeout_s)
    tta = None if a.trainer else MIN_FAST_TTA
    if "fast" not in skip:
        runner.run_row("fast 10 epochs bf16", "fast_bf16", "fast", "--run.epochs=10", min_tta=tta)
        runner.run_row("fast 10 epochs bf16 + compile", "fast_bf16_compile", "compile", "--run.epochs=10",
                       "--model.compile=true", min_tta=tta)
        runner.run_row("fast 10 epochs bf16, ffcv loader", "fast_bf16_ffcv", "ffcv", "--run.epochs=10",
                       "--data.loader=ffcv", min_tta=tta)
    if "sigterm" not in skip:
        runner.sigterm_then_resume()
    if "presets" not in skip:
        preset_rows(runner)
    ok = report.ok()
    failed = sum(r["status"] != "ok" for r in report.rows)
    print(f"gpu_check: {'every row passed' if ok else f'{failed} of {len(report.rows)} rows FAILED'} in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
