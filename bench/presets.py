"""One short real-data epoch per preset on this machine, to show each recipe learns (not a reproduction).

    python bench/presets.py [--data DIR --name cifar10] [--presets a,b] [--out runs/bench_presets]

Without --data it converts ../shared/data/cifar10-jpeg.tar.gz (or $CIFAR10_JPEG) into a temporary
folder first. Each preset trains one epoch with its own recipe (augmentation, optimizer, loss, EMA, TTA)
except where a CPU cannot afford it, as listed in CPU_CUTS: seed 000 at 64 px with adaptive pooling
instead of 320 px; the two ~5 M-parameter ResNets and the airbench net on the first 10,000 / 8,000 /
15,000 training images (minus the 5,000 held out for validation where the preset holds them out). The schedule
of a one-epoch run is the preset's schedule compressed into that epoch where the preset gives it
relative to the run (cosine over the run's epochs); seed 004 gives absolute epochs (5 warm-up epochs,
a 195-epoch period), so its one epoch is spent in warm-up at up to a fifth of the peak lr, unless
`--compress` rescales those two to the one epoch. Prints a table (and writes it as JSON) with test
accuracy, images/s and wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

# What a 2-core CPU can afford in about 10 minutes per preset.
CPU_CUTS = {
    "seed000_soheilnet": ["--data.resolution=64", "--model.adaptive_pool=true"],
    "seed001_resnet18_5m": ["--data.limit_train=10000"],
    "seed002_tpsnet": ["--data.limit_train=8000"],
    "fast": ["--data.limit_train=15000"],
}


def main() -> None:
    from cifar_dist.presets import PRESETS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--name", default="cifar10")
    ap.add_argument("--presets", default=",".join(p for p in sorted(PRESETS) if p != "smoke"))
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_presets")
    ap.add_argument("--full", action="store_true", help="no CPU cuts: full resolution and full training set")
    ap.add_argument("--compress", action="store_true",
                    help="seed004: warm-up 0.025 and cosine period 0.975 epochs (its 5 + 195 of 200, scaled to 1)")
    args = ap.parse_args()
    tmp = None
    if args.data is None:
        from loader import convert

        tmp = tempfile.TemporaryDirectory(prefix="cifar_dist_bench_")
        args.data, args.name = convert(Path(tmp.name))
    rows = []
    for preset in args.presets.split(","):
        cuts = [] if args.full else CPU_CUTS.get(preset, [])
        if args.compress and preset == "seed004_dsresnet_200k":
            cuts = [*cuts, "--sched.warmup_epochs=0.025", "--sched.period_epochs=0.975"]
        cmd = [sys.executable, "-m", "cifar_dist.train", f"--preset={preset}", f"--data.dir={args.data}",
               f"--data.name={args.name}", "--run.epochs=1", f"--run.out_dir={args.out}", f"--run.name={preset}",
               "--run.progress=false", *cuts]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            print(f"{preset}: failed ({p.returncode}): {p.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        res = json.loads((args.out / preset / "result.json").read_text())
        rows.append({"preset": preset, "cuts": " ".join(cuts), "test_acc": res["final"]["test_acc"],
                     "test_acc_tta": res["final"]["test_acc_tta"], "images_per_s": res["images_per_s"],
                     "wall_s": wall, "params": res["params"]})
        r = rows[-1]
        print(f"{preset:24s} test {r['test_acc']:6.2f} %  (tta {r['test_acc_tta']:6.2f} %)  "
              f"{r['images_per_s']:7.0f} img/s  {wall:6.0f} s  {r['cuts']}", flush=True)
    (args.out / "bench_presets.json").write_text(json.dumps(rows, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
