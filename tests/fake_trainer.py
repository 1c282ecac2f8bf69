"""A stand-in for `python -m cifar_dist.train` in search-worker tests: the trainer's contract without torch.

Reads --run.out_dir, --run.name, --run.epochs, --run.stop_after, --optim.lr (other flags are ignored) and
writes the run directory the way the engine does: one metrics.jsonl row per finished epoch (val_acc,
test_acc), `state.json` as its checkpoint (epoch and step), paused.json at run.stop_after (exit 0),
result.json at the end (exit 0). SIGTERM/SIGUSR1 save the checkpoint mid-epoch and exit 3; a resume goes on
from the saved step, so every epoch is logged once. The accuracy is a fixed function of the learning rate
and the epoch (best near lr = 1e-3). FAKE_STEP_S (default 0.02) is the time of one of 5 steps per epoch;
FAKE_STARTED, when set, is a file touched once the first step has run. FAKE_EXIT=N makes it print 25 numbered
lines ("fake line 1" ... "fake line 25") and exit N at once (a trainer that dies on start-up).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

STEPS = 5


def main(argv: list[str]) -> int:
    if os.environ.get("FAKE_EXIT"):
        for i in range(1, 26):
            print(f"fake line {i}", flush=True)
        return int(os.environ["FAKE_EXIT"])
    flags = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    run_dir = Path(flags["run.out_dir"]) / flags["run.name"]
    run_dir.mkdir(parents=True, exist_ok=True)
    epochs, stop_after = int(flags["run.epochs"]), int(flags.get("run.stop_after", 0))
    lr = float(flags.get("optim.lr", 1e-3))
    got: list[int] = []
    for s in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(s, lambda signum, frame: got.append(signum))
    ckpt = run_dir / "state.json"
    state = json.loads(ckpt.read_text()) if ckpt.is_file() and flags.get("resume") == "auto" else {"epoch": 0,
                                                                                                   "step": 0}
    (run_dir / "paused.json").unlink(missing_ok=True)
    (run_dir / "config.yaml").write_text(f"optim:\n  lr: {lr}\nrun:\n  epochs: {epochs}\n  name: {run_dir.name}\n")
    quality = math.exp(-((math.log10(lr) + 3) ** 2))
    step_s = float(os.environ.get("FAKE_STEP_S", "0.02"))
    while state["epoch"] < epochs:
        if stop_after and state["epoch"] >= stop_after:
            (run_dir / "paused.json").write_text(json.dumps({"epoch": state["epoch"], "epochs": epochs}))
            return 0
        while state["step"] < STEPS:
            time.sleep(step_s)
            state["step"] += 1
            if os.environ.get("FAKE_STARTED"):
                Path(os.environ["FAKE_STARTED"]).touch()
            if got:
                ckpt.write_text(json.dumps(state))
                print(f"stopped by signal at epoch {state['epoch'] + 1} step {state['step']}", flush=True)
                return 3
        e = state["epoch"] + 1
        acc = 100 * quality * (1 - 0.5 ** e)
        with (run_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"epoch": e, "step": e * STEPS, "val_acc": acc, "test_acc": acc - 1,
                                "train_loss": 1 / e}) + "\n")
        state = {"epoch": e, "step": 0}
        ckpt.write_text(json.dumps(state))
    acc = 100 * quality * (1 - 0.5 ** epochs)
    (run_dir / "result.json").write_text(json.dumps({
        "name": run_dir.name, "status": "finished", "epochs": epochs, "final": {"test_acc": acc - 1},
        "best": {"epoch": epochs, "val_acc": acc, "test_acc": acc - 1}}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
