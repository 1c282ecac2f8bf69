"""Accuracy of a recipe on real data, per epoch and per seed, written to a committed results file.

    python bench/recipes.py fast --epochs 2 --seeds 0,1 --data data       # train, print, write results
    python bench/recipes.py seed003_simple_cnn --epochs 50 --seeds 0 --data data --resume   # continues a stopped run
    python bench/recipes.py --table                                       # the README table from the files
    python bench/recipes.py --table --update-readme                       # ... written into README.md

Each seed is one `python -m cifar_dist.train --preset=PRESET --run.epochs=N --run.seed=S ...` run (one
process, the machine's default device and precision; extra trainer flags after `--`). The script
prints test accuracy after every epoch, images/s and wall time, then writes
`bench/results/<preset>-e<N>[-<tag>].json`: the exact commands, git SHA (and whether the tree was
dirty), machine, data (manifest: source sha256, counts per class), every run's per-epoch metrics and
result, and the mean ± std over seeds (n = number of seeds). `--table` renders every results file as
one markdown table; `--update-readme` puts it between the README's `recipes:begin/end` markers.
Without `--data` the shared real CIFAR-10 (../shared/data/cifar10-jpeg.tar.gz or $CIFAR10_JPEG) is
converted into a temporary folder first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))
BEGIN, END = "<!-- recipes:begin -->", "<!-- recipes:end -->"


def git(*args: str) -> str:
    p = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else "unknown"


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "gpu": gpu, "platform": platform.platform(),
            "torch": torch.__version__, "load_avg_at_start": os.getloadavg()[0]}


def stat(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def run_seed(preset: str, epochs: int, seed: int, data: Path, name: str, out: Path, extra: list[str],
             resume: bool = False) -> dict:
    run_name = f"{preset}-e{epochs}-s{seed}"
    cmd = [sys.executable, "-m", "cifar_dist.train", f"--preset={preset}", f"--run.epochs={epochs}",
           f"--run.seed={seed}", f"--data.dir={data}", f"--data.name={name}", f"--run.out_dir={out}",
           f"--run.name={run_name}", "--run.progress=false", *(["--resume=auto"] if resume else []), *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # the trainer's banner and one line per epoch, as they come
        print(f"  [{run_name}] {line.rstrip()}", flush=True)
    if proc.wait() != 0:
        sys.exit(f"error: {run_name}: the trainer exited with status {proc.returncode}")
    run_dir = out / run_name
    result = json.loads((run_dir / "result.json").read_text())
    # A resumed run's wall time is the trainer's own, summed over its sessions.
    wall = result["wall_s"] if resume else time.perf_counter() - t0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    per_epoch = [{k: r.get(k) for k in ("epoch", "test_acc", "val_acc", "ema_test_acc", "train_loss", "lr",
                                          "images_per_s", "epoch_s")} for r in rows]
    return {"seed": seed, "command": cmd[1:], "resumable": resume, "wall_s": wall, "epochs": per_epoch,
            "test_acc": result["final"]["test_acc"], "test_acc_tta": result["final"]["test_acc_tta"],
            "images_per_s": result["images_per_s"], "params": result["params"]}


def measure(args: argparse.Namespace) -> Path:
    extra = args.extra
    tmp = None
    data, name = args.data, args.name
    if data is None:
        from loader import convert  # bench/loader.py

        tmp = tempfile.TemporaryDirectory(prefix="cifar_dist_recipes_")
        data, name = convert(Path(tmp.name))
    manifest_path = Path(data) / f"{name}_manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    out = Path(args.out_runs)
    info = {"preset": args.preset, "epochs": args.epochs, "tag": args.tag, "extra_flags": extra,
            "git_sha": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "data": {"name": name, "source_sha256": manifest.get("source_sha256"),
                     "counts": manifest.get("counts"), "class_names": manifest.get("class_names")}}
    runs = []
    for seed in args.seeds:
        r = run_seed(args.preset, args.epochs, seed, Path(data), name, out, extra, args.resume)
        accs = " ".join(f"{e['test_acc']:.2f}" for e in r["epochs"] if e.get("test_acc") is not None)
        print(f"{args.preset} seed {seed}: test acc per epoch {accs}; final {r['test_acc']:.2f} % "
              f"(TTA {r['test_acc_tta']:.2f} %), {r['images_per_s']:.0f} images/s, {r['wall_s']:.0f} s", flush=True)
        runs.append(r)
    summary = {k: stat([r[k] for r in runs]) for k in ("test_acc", "test_acc_tta", "images_per_s", "wall_s")}
    record = {**info, "seeds": args.seeds, "runs": runs, "summary": summary}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{args.preset}-e{args.epochs}{'-' + args.tag if args.tag else ''}.json"
    tmp_path = path.with_suffix(".json.tmp")
    tmp_path.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp_path, path)
    s = summary
    print(f"{args.preset} {args.epochs} epochs, seeds {args.seeds}: test {s['test_acc']['mean']:.2f} ± "
          f"{s['test_acc']['std']:.2f} % (TTA {s['test_acc_tta']['mean']:.2f} ± {s['test_acc_tta']['std']:.2f} %), "
          f"n={s['test_acc']['n']}; wrote {path.relative_to(REPO)}")
    if tmp is not None:
        tmp.cleanup()
    return path


def pct(st: dict) -> str:
    """`mean ± std %`, or just `mean %` for one seed (no spread to show)."""
    return f"{st['mean']:.2f}" + (f" \u00b1 {st['std']:.2f}" if st["n"] > 1 else "") + " %"


def table() -> str:
    """One markdown row per (preset, epochs, extra flags): the runs of every results file that measured it
    (seeds may come from several files, e.g. measured one by one), accuracy as mean ± std (n = seeds)."""
    head = ("| preset | epochs | flags | test acc. | with TTA | n (seeds) | images/s | wall per run | git SHA |\n"
            "|---|---:|---|---:|---:|---|---:|---:|---|")
    groups: dict[tuple, list[dict]] = {}
    for path in sorted(RESULTS.glob("*.json")):
        r = json.loads(path.read_text())
        groups.setdefault((r["preset"], r["epochs"], tuple(r.get("extra_flags") or [])), []).append(r)
    rows = []
    for (preset, epochs, flags), records in groups.items():
        runs = sorted((run for r in records for run in r["runs"]), key=lambda run: run["seed"])
        s = {k: stat([run[k] for run in runs]) for k in ("test_acc", "test_acc_tta", "images_per_s", "wall_s")}
        shas = ", ".join(sorted({f"`{r['git_sha'][:10]}{'+dirty' if r.get('git_dirty') else ''}`" for r in records}))
        rows.append(
            f"| `{preset}` | {epochs} | {' '.join(flags) or '(preset)'} | {pct(s['test_acc'])} | {pct(s['test_acc_tta'])} "
            f"| {s['test_acc']['n']} ({', '.join(str(run['seed']) for run in runs)}) | {s['images_per_s']['mean']:,.0f} "
            f"| {s['wall_s']['mean'] / 60:.1f} min | {shas} |")
    return "\n".join([head, *rows])


def update_readme(text: str) -> None:
    readme = REPO / "README.md"
    content = readme.read_text()
    if BEGIN not in content or END not in content:
        sys.exit(f"error: {readme}: expected the markers {BEGIN} and {END}, found none")
    start, end = content.index(BEGIN) + len(BEGIN), content.index(END)
    readme.write_text(content[:start] + "\n" + text + "\n" + content[end:])


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", nargs="?")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the preset's)")
    ap.add_argument("--seeds", default="0", help="comma-separated run seeds (default 0)")
    ap.add_argument("--data", type=Path, default=None, help="folder with <name>_train.beton (default: convert)")
    ap.add_argument("--name", default="cifar10")
    ap.add_argument("--tag", default="", help="suffix of the results file name (variants of one preset)")
    ap.add_argument("--out-runs", default=str(REPO / "runs" / "bench_recipes"), help="where the runs are written")
    ap.add_argument("--resume", action="store_true",
                    help="continue runs found in --out-runs from their last checkpoint (--resume=auto): a long "
                         "recipe can train over several sittings; the tensor loader resumes bit-exactly")
    ap.add_argument("--table", action="store_true", help="print the markdown table of bench/results/*.json")
    ap.add_argument("--update-readme", action="store_true", help="with --table: write it into README.md")
    args = ap.parse_args(argv)
    args.extra = extra
    if args.table:
        text = table()
        print(text)
        if args.update_readme:
            update_readme(text)
        return
    if not args.preset:
        ap.error("a preset is required (or --table)")
    if args.epochs is None:
        from cifar_dist.presets import get_preset

        args.epochs = get_preset(args.preset).run.epochs
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    measure(args)


if __name__ == "__main__":
    main()
