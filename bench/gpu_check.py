"""The first-GPU check (run through bench/gpu_check.sh): what a CPU cannot prove, on one real GPU, in < 10 minutes.

    bash bench/gpu_check.sh [--data_dir data] [--name cifar10] [--out DIR] [--launch launch/1gpu.yaml]

1. Loaders on the GPU: the FFCV loader (training and evaluation pipelines) and the tensor loader, one epoch each
   after a warm-up; the device of every image and label batch is asserted.
2. `fast` for 2 epochs in bf16 under `accelerate launch --config_file launch/1gpu.yaml`, without and with
   `--model.compile=true`.
3. SIGTERM to the launcher in the middle of epoch 2 of a 4-epoch `fast` run: the trainer must checkpoint
   mid-epoch and stop ("stopped by signal"); `--resume=auto` must finish with every epoch once in metrics.jsonl.
Prints one table (status, images/s, seconds of each check). Exit status: 0 all passed, 1 a check failed,
2 no usable GPU or no data (nothing run).
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # a source checkout's cifar_dist, here and (PYTHONPATH) in the launched trainers
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
EXIT_NO_GPU = 2


def fail(msg: str) -> int:
    print(f"gpu_check: {msg}", file=sys.stderr, flush=True)
    return EXIT_NO_GPU


def loader_rows(data_dir: Path, name: str) -> list[dict]:
    """One epoch of each loader on cuda:0 after a warm-up epoch; every batch's device asserted."""
    import torch

    from cifar_dist.data import (
        Augment,
        FFCVLoader,
        Order,
        Split,
        TensorLoader,
        beton_paths,
        read_images,
        usable_cpus,
    )

    cuda = torch.device("cuda", 0)
    train_path, test_path = beton_paths(data_dir, name)
    workers = max(1, usable_cpus())
    makers = {
        "loader ffcv train": lambda: FFCVLoader(Split(train_path), batch_size=512, device=cuda, order=Order(train=True),
                                                aug=Augment(crop_padding=2, flip=True), num_workers=workers),
        "loader ffcv eval": lambda: FFCVLoader(Split(test_path), batch_size=1000, device=cuda, num_workers=workers),
        "loader tensor train": lambda: TensorLoader(*read_images(train_path), batch_size=512, device=cuda,
                                                    order=Order(train=True), aug=Augment(crop_padding=2, flip=True)),
    }
    rows = []
    for check, make in makers.items():
        t0 = time.perf_counter()
        try:
            loader = make()
            for epoch in range(2):  # epoch 0 warms up (FFCV's JIT compile, CUDA context); epoch 1 is timed
                loader.set_epoch(epoch)
                torch.cuda.synchronize()
                t_epoch, n = time.perf_counter(), 0
                for x, y in loader:
                    if x.device != cuda or y.device != cuda:
                        raise AssertionError(f"batch on images {x.device}, labels {y.device}; expected {cuda}")
                    n += y.numel()
                torch.cuda.synchronize()
                ips = n / (time.perf_counter() - t_epoch)
            rows.append({"check": check, "status": "ok", "images_per_s": ips, "note": f"{n} images on {cuda}"})
        except Exception as e:  # a check fails; the others still run
            rows.append({"check": check, "status": "FAILED", "note": f"{type(e).__name__}: {e}"})
        rows[-1]["seconds"] = time.perf_counter() - t0
    return rows


class Runner:
    """`accelerate launch --config_file <launch> -m cifar_dist.train --preset=fast ...` runs in one output folder."""

    def __init__(self, py: str, launch: Path, data_dir: Path, name: str, out: Path):
        self.py, self.launch, self.data_dir, self.name, self.out = py, launch, data_dir, name, out

    def cmd(self, run: str, *extra: str) -> list[str]:
        return [self.py, "-m", "accelerate.commands.launch", "--config_file", str(self.launch), "-m",
                "cifar_dist.train", "--preset=fast", "--run.mixed_precision=bf16", f"--data.dir={self.data_dir}",
                f"--data.name={self.name}", f"--run.out_dir={self.out}", f"--run.name={run}", "--run.progress=false",
                *extra]

    def result(self, run: str) -> dict:
        p = self.out / run / "result.json"
        return json.loads(p.read_text()) if p.is_file() else {}

    def row(self, check: str, run: str, proc_rc: int, seconds: float, log: Path) -> dict:
        res = self.result(run)
        ok = proc_rc == 0 and res.get("status") == "finished"
        note = (f"test acc {res['final']['test_acc']:.2f}%" if ok else f"exit {proc_rc}, log {log}")
        return {"check": check, "status": "ok" if ok else "FAILED", "images_per_s": res.get("images_per_s"),
                "seconds": seconds, "note": note}

    def train(self, check: str, run: str, *extra: str) -> dict:
        log = self.out / f"{run}.log"
        t0 = time.perf_counter()
        with open(log, "w") as f:
            rc = subprocess.run(self.cmd(run, "--run.epochs=2", *extra), stdout=f, stderr=subprocess.STDOUT).returncode
        return self.row(check, run, rc, time.perf_counter() - t0, log)

    def sigterm_then_resume(self, epochs: int = 4) -> list[dict]:
        """TERM to the launcher (only) in the middle of epoch 2 of `epochs`, then --resume=auto."""
        run, log = "fast_sigterm", self.out / "fast_sigterm.log"
        t0 = time.perf_counter()
        proc = subprocess.Popen(self.cmd(run, f"--run.epochs={epochs}"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        lines: list[str] = []
        first_epoch = threading.Event()

        def pump():
            with open(log, "w") as f:
                for line in proc.stdout:
                    f.write(line)
                    f.flush()
                    lines.append(line)
                    if line.startswith("epoch=1 "):
                        first_epoch.set()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        note = ""
        if first_epoch.wait(timeout=420):
            row = dict(kv.split("=", 1) for kv in lines[-1].split() if "=" in kv) if lines else {}
            time.sleep(max(0.5, float(row.get("epoch_s", 4)) / 2))  # about the middle of epoch 2
            proc.send_signal(signal.SIGTERM)
        else:
            note = "epoch 1 never ended; "
        try:
            rc = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            rc = None
        time.sleep(5)
        stray = _group_alive(proc.pid)
        if stray:  # a launcher that does not forward TERM leaves its trainer running: stop it
            os.killpg(proc.pid, signal.SIGKILL)
        reader.join(timeout=10)
        state_file = self.out / run / "checkpoints" / "last" / "train_state.json"
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}
        stopped = any("stopped by signal" in line for line in lines)
        mid = state.get("step_in_epoch", 0) > 0
        ok = stopped and mid and not stray
        note += (f"launcher exit {rc}; " + ("trainer left running (TERM not forwarded); " if stray else "")
                 + (f"checkpoint at epoch {state.get('epoch', 0) + 1} step {state.get('step_in_epoch')}" if state
                    else "no checkpoint"))
        rows = [{"check": "SIGTERM mid-epoch (1gpu launcher)", "status": "ok" if ok else "FAILED",
                 "seconds": time.perf_counter() - t0, "note": note}]
        t1 = time.perf_counter()
        rlog = self.out / "fast_resume.log"
        with open(rlog, "w") as f:
            rc = subprocess.run(self.cmd(run, f"--run.epochs={epochs}", "--resume=auto"), stdout=f,
                                stderr=subprocess.STDOUT).returncode
        row = self.row("resume after SIGTERM", run, rc, time.perf_counter() - t1, rlog)
        metrics = self.out / run / "metrics.jsonl"
        seen = [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()] if metrics.is_file() else []
        if seen != list(range(1, epochs + 1)):
            row["status"], row["note"] = "FAILED", f"metrics.jsonl epochs {seen}, expected 1..{epochs} once each"
        return rows + [row]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def table(rows: list[dict]) -> str:
    head = f"{'check':<36} {'status':<7} {'images/s':>10} {'seconds':>8}  note"
    out = [head, "-" * len(head)]
    for r in rows:
        ips = f"{r['images_per_s']:,.0f}" if r.get("images_per_s") else "-"
        out.append(f"{r['check']:<36} {r['status']:<7} {ips:>10} {r.get('seconds', 0):>8.1f}  {r.get('note', '')}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/gpu_check.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data_dir", default=str(REPO / "data"))
    ap.add_argument("--name", default="cifar10")
    ap.add_argument("--out", default="")
    ap.add_argument("--launch", default=str(REPO / "launch" / "1gpu.yaml"))
    a = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        return fail(f"no usable GPU (torch.cuda.is_available() is False with torch {torch.__version__}, CUDA "
                    f"{torch.version.cuda}); this check needs one CUDA GPU; nothing was run")
    data_dir = Path(a.data_dir)
    if not (data_dir / f"{a.name}_train.beton").is_file() or not (data_dir / f"{a.name}_test.beton").is_file():
        return fail(f"{data_dir}/{a.name}_{{train,test}}.beton not found: run `make data` (or pass --data_dir)")
    out = Path(a.out or tempfile.mkdtemp(prefix="gpu_check_"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, output in {out}", flush=True)
    rows = loader_rows(data_dir, a.name)
    runner = Runner(sys.executable, Path(a.launch), data_dir, a.name, out)
    rows.append(runner.train("fast 2 epochs bf16", "fast_bf16"))
    rows.append(runner.train("fast 2 epochs bf16 + compile", "fast_bf16_compile", "--model.compile=true"))
    rows += runner.sigterm_then_resume()
    print(table(rows), flush=True)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
