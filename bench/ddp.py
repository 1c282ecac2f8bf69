"""DDP scaling on the CPU: 2 processes x 1 thread against 1 process x 2 threads, same global batch.

    python bench/ddp.py [--model simple_cnn] [--batch 256] [--steps 30] [--warmup 5]

Both sides train the same model (cifar_dist.models) on the same random CIFAR-shaped batches with SGD:
one process with torch.set_num_threads(2) and the whole global batch, and two processes (gloo DDP,
torch.distributed initialised from RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, as torchrun would) with one
thread and half the batch each, every process pinned to a CPU of its own when two are available. Each
side times `--steps` steps after `--warmup` untimed ones (rank 0, between two barriers) and the script
prints images/s of both and the ratio DDP / threads. Goal: ratio >= 0.85, i.e. DDP over gloo costs at
most 15 % against intra-op threads at equal CPUs.

Measure on an idle machine: the script prints the 1-minute load average first and marks the result
"NOT QUOTABLE" when the load before the run is above 0.5 per CPU used (1.0 for the 2 CPUs here),
because shared cores make both figures meaningless.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(model_name: str, batch: int, steps: int, warmup: int, threads: int) -> dict:
    """Train in this process (DDP when WORLD_SIZE > 1); images/s over the timed steps."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from cifar_dist.models import create_model

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cpus = sorted(os.sched_getaffinity(0))
    if world > 1 and len(cpus) >= world:
        os.sched_setaffinity(0, {cpus[rank]})
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(model_name)
    if world > 1:
        dist.init_process_group("gloo")
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    per_process = batch // world
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(per_process, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (per_process,), generator=g)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if world > 1:
        dist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if world > 1:
        dist.barrier()
    seconds = time.perf_counter() - t0
    if world > 1:
        dist.destroy_process_group()
    return {"rank": rank, "world": world, "threads": torch.get_num_threads(), "images_per_s": batch * steps / seconds}


def run_side(args, procs: int, threads: int) -> dict:
    """Start `procs` worker processes with `threads` threads each; rank 0's result."""
    port = _free_port()
    cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(threads)]
    children = []
    for rank in range(procs):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(procs),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": str(threads)}
        children.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
    outs = [c.communicate()[0] for c in children]
    if any(c.returncode for c in children):
        raise SystemExit(f"a worker failed: exit statuses {[c.returncode for c in children]}")
    return json.loads(outs[0].strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="simple_cnn")
    ap.add_argument("--batch", type=int, default=256, help="global batch (both sides)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.model, args.batch, args.steps, args.warmup, args.threads)), flush=True)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from cifar_dist.train import leave

            leave(0)  # as the trainer ends a rank of several: DDP's gloo threads outlive the process group
        return
    cpus = len(os.sched_getaffinity(0))
    load = os.getloadavg()[0]
    quotable = cpus >= 2 and load <= 0.5 * 2
    print(f"bench/ddp.py: model {args.model}, global batch {args.batch}, {args.steps} timed steps; "
          f"{cpus} CPUs usable, load average {load:.2f}" + ("" if quotable else "  -> NOT QUOTABLE (machine busy "
                                                              "or fewer than 2 CPUs)"))
    threads = run_side(args, procs=1, threads=2)
    ddp = run_side(args, procs=2, threads=1)
    threads_again = run_side(args, procs=1, threads=2)  # the better of two: load drifts during the run
    base = max(threads["images_per_s"], threads_again["images_per_s"])
    ratio = ddp["images_per_s"] / base
    print(f"1 process x 2 threads: {base:8.1f} images/s")
    print(f"2 processes x 1 thread (gloo DDP): {ddp['images_per_s']:8.1f} images/s")
    print(f"ratio DDP / threads: {ratio:.3f} (goal >= 0.85){'' if quotable else '  NOT QUOTABLE: load was high'}")
    load_after = os.getloadavg()[0]
    if load_after > 2.5:
        print(f"load average after the run {load_after:.2f}: other work shared the CPUs; rerun on an idle machine")


if __name__ == "__main__":
    main()
