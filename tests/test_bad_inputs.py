"""Bad inputs across every command: one `error:` line naming the file or flag, exit status 2, nothing
written or changed, no process left running (issue 11).

One parametrized matrix (`CASES`) over `cifar-dist prepare` / `python -m data_prep`, `cifar-dist train` /
`python -m cifar_dist.train`, `cifar-dist sweep` and `cifar-dist report`, called in-process (a subprocess
would prove nothing more), plus a few real launches: `python -m cifar_dist`, `python -m data_prep` and
`accelerate launch` with two processes (`launch/cpu.yaml`), which must print the error once.

Each case is `build(ctx) -> (argv, needle)`: it prepares its inputs under the test's tmp_path (also the
working directory, so default outputs such as runs/ or data/ would land there) and returns the command line
and a text the single error line must contain. The test snapshots the tree (paths, sizes, mtimes,
sha256) before and after the call.

The rows of issue 11 about checkpoints and run directories (crafted pickles, the run-directory lock, the
resume config check, disk full, metrics repair, a NaN before the first checkpoint) are here too.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cifar_dist.cli import main as cli_main
from cifar_dist.cli.train import main as train_main
from cifar_dist.run_dir import STATUS_FILE
from tests.data_prep_helpers import make_cifar10_archive, make_cifar10_dir, make_image_folder, make_tar
from tests.helpers import REPO, free_port
from tests.helpers import small_tmpfs as mounted_tmpfs

GOOD_ROW = json.dumps({"epoch": 1, "step": 3, "train_loss": 2.0, "test_acc": 40.0, "test_loss": 1.9}) + "\n"
SPEC = "name: small\npreset: smoke\nfixed:\n  data.dir: data\n  run.epochs: 1\ngrid:\n  optim.lr: [1e-3, 2e-3]\n"


# ------------------------------------------------------------------------------------------ checks


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every path under `roots`: directories by name, files by size, mtime and sha256 (symlinks by target)."""
    out: dict[str, tuple] = {}
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for d in dirnames:
                out[os.path.join(dirpath, d)] = ("dir",)
            for f in filenames:
                p = Path(dirpath, f)
                if p.is_symlink():
                    out[str(p)] = ("link", os.readlink(p))
                    continue
                st = p.stat()
                out[str(p)] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def changes(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    added = [f"+ {p}" for p in after.keys() - before.keys()]
    removed = [f"- {p}" for p in before.keys() - after.keys()]
    changed = [f"~ {p}" for p in before.keys() & after.keys() if before[p] != after[p]]
    return sorted(added + removed + changed)


def _proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgrp, session) of a process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3])


def _all_procs() -> dict[int, tuple[str, int, int, int]]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _proc_stat(int(entry))) is not None:
            out[int(entry)] = st
    return out


def our_processes() -> set[int]:
    """Processes this test process started (descendants) or that share its process group."""
    procs, me, group = _all_procs(), os.getpid(), os.getpgrp()
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [me]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    found |= {pid for pid, st in procs.items() if st[2] == group}
    return found - {me}


def session_processes(sid: int) -> list[int]:
    return [pid for pid, st in _all_procs().items() if st[3] == sid]


def assert_one_error_line(err: str, needle: str) -> None:
    assert err.endswith("\n") and err.count("\n") == 1, f"expected one line on stderr, got:\n{err}"
    assert err.startswith("error: "), err
    assert needle in err, f"{needle!r} not in {err!r}"


# ------------------------------------------------------------------------------------------ the entries


def _data_prep_main(argv: list[str]) -> int:
    """`python -m data_prep ARGV` in-process (argparse exits through SystemExit)."""
    from data_prep.cli import main

    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code or 0)


ENTRIES: dict[str, Callable[[list[str]], int]] = {
    "cifar-dist": cli_main,
    "python -m data_prep": _data_prep_main,
    "python -m cifar_dist.train": train_main,
}


@dataclass
class Ctx:
    """What a case builds its inputs from: the test's tmp_path (also the cwd) and the tiny dataset."""

    tmp: Path
    request: pytest.FixtureRequest
    roots: list[Path] = field(default_factory=list)

    @property
    def data(self) -> tuple[Path, str]:
        """The session's tiny .beton dataset (watched for changes too)."""
        data_dir, name = self.request.getfixturevalue("tiny_data")
        if data_dir not in self.roots:
            self.roots.append(data_dir)
        return data_dir, name

    def train(self, *extra: str) -> list[str]:
        data_dir, name = self.data
        return ["--preset=smoke", f"--data.dir={data_dir}", f"--data.name={name}", f"--run.out_dir={self.tmp / 'runs'}",
                "--run.name=bad", "--run.progress=false", *extra]

    def archive(self) -> Path:
        return make_cifar10_archive(self.tmp)[0]

    def write(self, rel: str, text: str | bytes) -> Path:
        p = self.tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return p

    def spec(self, text: str = SPEC) -> Path:
        return self.write("spec.yaml", text)

    def run_dir(self, metrics: str = GOOD_ROW, result: str | None = None, rel: str = "sweep/c000-s0") -> Path:
        d = self.tmp / rel
        self.write(f"{rel}/metrics.jsonl", metrics)
        if result is not None:
            self.write(f"{rel}/result.json", result)
        return d


@dataclass
class Case:
    id: str
    entry: str
    build: Callable[[Ctx], tuple[list[str], str]]
    marks: tuple = ()
    env: dict[str, str] = field(default_factory=dict)


CASES: list[Case] = []


def case(id: str, entry: str = "cifar-dist", marks: tuple = (), env: dict[str, str] | None = None):
    def register(build):
        CASES.append(Case(id, entry, build, marks, env or {}))
        return build
    return register


# ------------------------------------------------------------------------------------------ cifar-dist


@case("cli-unknown-command")
def _(c):
    return ["fit", "--preset=smoke"], "unknown command 'fit'"


@case("cli-models-unknown-flag")
def _(c):
    return ["models", "--verbose"], "cifar-dist models: unknown flag --verbose"


@case("cli-presets-extra-argument")
def _(c):
    return ["presets", "all"], "cifar-dist presets: unexpected argument 'all'"


# ------------------------------------------------------------------------------------------ prepare


class _Evil:
    """A pickle whose loading would create the file MARKER (it must never run)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _bad_member(c: Ctx, member: str, content: bytes) -> Path:
    make_cifar10_dir(c.tmp / "src")
    (c.tmp / "src" / "cifar-10-batches-py" / member).write_bytes(content)
    return make_tar(c.tmp / "src" / "cifar-10-batches-py", c.tmp / "cifar-10-python.tar.gz")


def _prep(argv: list[str], c: Ctx) -> list[str]:
    return [*argv, "--out", str(c.tmp / "data"), "--num_workers", "1"]


@case("prepare-missing-source")
def _(c):
    return ["prepare", *_prep([str(c.tmp / "nope.tar.gz")], c)], "nope.tar.gz: expected an existing archive or folder"


@case("prepare-not-an-archive")
def _(c):
    p = c.write("notes.tar.gz", "not an archive\n" * 50)
    return ["prepare", *_prep([str(p)], c)], "notes.tar.gz: expected a .tar/.tar.gz archive"


@case("prepare-truncated-archive")
def _(c):
    archive, _ = make_cifar10_archive(c.tmp, per_batch=40, n_test=40)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    return ["prepare", *_prep([str(archive)], c)], "cifar-10-python.tar.gz"


@case("prepare-md5-mismatch")
def _(c):
    return ["prepare", *_prep([str(c.archive()), "--md5", "0" * 32], c)], f"expected md5 {'0' * 32}, found md5"


@case("prepare-pickle-without-keys")
def _(c):
    archive = _bad_member(c, "data_batch_2", pickle.dumps({b"pixels": [1, 2], b"y": [1, 2]}))
    return ["prepare", *_prep([str(archive)], c)], "data_batch_2: expected keys b'data', b'labels'"


@case("prepare-pickle-with-code")
def _(c):
    archive = _bad_member(c, "data_batch_3", pickle.dumps({b"data": _Evil(c.tmp / "pwned"), b"labels": []}))
    return ["prepare", *_prep([str(archive)], c)], "data_batch_3: expected a pickled dict"


@case("prepare-image-wrong-size")
def _(c):
    from PIL import Image

    make_image_folder(c.tmp / "tree")
    Image.new("RGB", (64, 48)).save(c.tmp / "tree" / "train" / "dog" / "001.png")
    return ["prepare", *_prep([str(c.tmp / "tree")], c)], "train/dog/001.png: expected a 32x32 image"


@case("prepare-class-sets-differ")
def _(c):
    make_image_folder(c.tmp / "tree")
    os.rename(c.tmp / "tree" / "test" / "frog", c.tmp / "tree" / "test" / "toad")
    return ["prepare", *_prep([str(c.tmp / "tree")], c)], "tree: expected the same class folders in train/ and test/"


@case("prepare-unreadable-image")
def _(c):
    make_image_folder(c.tmp / "tree")
    c.write("tree/train/cat/002.png", b"\x89PNG not really")
    return ["prepare", *_prep([str(c.tmp / "tree")], c)], "train/cat/002.png: expected an image file PIL can read"


@case("prepare-out-is-a-file")
def _(c):
    archive = c.archive()
    c.write("out", "x")
    return ["prepare", str(archive), "--out", str(c.tmp / "out")], "out: expected a writable output directory"


@case("prepare-coarse-labels-on-cifar10")
def _(c):
    return ["prepare", *_prep([str(c.archive()), "--labels", "coarse"], c)], "--labels: expected fine"


@case("prepare-bad-mode")
def _(c):
    return ["prepare", *_prep([str(c.archive()), "--mode=png"], c)], "--mode: expected raw or jpg, found 'png'"


@case("prepare-bad-jpeg-quality")
def _(c):
    return ["prepare", *_prep([str(c.archive()), "--mode=jpg", "--jpeg_quality=0"], c)], "--jpeg_quality: expected"


@case("prepare-bad-num-workers")
def _(c):
    return ["prepare", str(c.archive()), "--out", str(c.tmp / "data"), "--num_workers=0"], "--num_workers: expected"


@case("prepare-unknown-flag-converts-nothing")
def _(c):
    return ["prepare", *_prep([str(c.archive()), "--bogus", "1"], c)], "cifar-dist prepare: unknown flag --bogus"


@case("prepare-short-flag")
def _(c):
    return ["prepare", str(c.archive()), "-o", str(c.tmp / "data")], "cifar-dist prepare: unknown flag '-o'"


@case("prepare-value-on-boolean-flag")
def _(c):
    return ["prepare", *_prep([str(c.archive()), "--force=maybe"], c)], "--force: expected true or false, found 'maybe'"


@case("prepare-fire-separator")
def _(c):
    return ["prepare", str(c.archive()), "-", "extra"], "cifar-dist prepare: unexpected argument '-'"


@case("data-prep-missing-source", entry="python -m data_prep")
def _(c):
    return _prep([str(c.tmp / "nope")], c), "nope: expected an existing archive or folder"


@case("data-prep-truncated-archive", entry="python -m data_prep")
def _(c):
    archive, _ = make_cifar10_archive(c.tmp, per_batch=40, n_test=40)
    archive.write_bytes(archive.read_bytes()[:4000])
    return _prep([str(archive)], c), "cifar-10-python.tar.gz"


@case("data-prep-unknown-flag-converts-nothing", entry="python -m data_prep")
def _(c):
    return _prep([str(c.archive()), "--bogus", "1"], c), "--bogus"


@case("data-prep-value-on-optional-boolean", entry="python -m data_prep")
def _(c):
    return _prep([str(c.archive()), "--progress=maybe"], c), "--progress: expected true or false, found 'maybe'"


@case("data-prep-bad-mode", entry="python -m data_prep")
def _(c):
    return _prep([str(c.archive()), "--mode=png"], c), "--mode"


# ------------------------------------------------------------------------------------------ train


@case("train-unknown-key")
def _(c):
    return ["train", *c.train("--optim.lrr=0.1")], "--optim.lrr: unknown key"


@case("train-unknown-section", entry="python -m cifar_dist.train")
def _(c):
    return c.train("--optm.lr=0.1"), "--optm.lr: unknown section 'optm'"


@case("train-unknown-flag-without-section", entry="python -m cifar_dist.train")
def _(c):
    return c.train("--bogus=1"), "cifar_dist.train: unknown flag --bogus"


@case("train-wrong-type")
def _(c):
    return ["train", *c.train("--run.epochs=three")], "--run.epochs: expected an integer, found 'three'"


@case("train-outside-choices", entry="python -m cifar_dist.train")
def _(c):
    return c.train("--data.loader=dali"), "--data.loader: expected one of tensor, ffcv, found 'dali'"


@case("train-negative-value")
def _(c):
    return ["train", *c.train("--optim.lr=-0.1")], "--optim.lr: expected a value >= 0, found -0.1"


@case("train-bad-list", entry="python -m cifar_dist.train")
def _(c):
    return c.train("--data.mean=[0.5, 0.5"), "--data.mean: expected a list of numbers"


@case("train-bad-boolean-config-value")
def _(c):
    return ["train", *c.train("--run.ema=maybe")], "--run.ema: expected true or false, found 'maybe'"


@case("train-unknown-preset")
def _(c):
    return ["train", *c.train("--preset=seed999")], "--preset: unknown preset 'seed999'"


@case("train-missing-data", entry="python -m cifar_dist.train")
def _(c):
    return c.train(f"--data.dir={c.tmp / 'nodata'}"), f"{c.tmp / 'nodata' / 'tiny_train.beton'}: file not found"


@case("train-missing-config-file")
def _(c):
    return ["train", *c.train(f"--config={c.tmp / 'run.yaml'}")], f"--config: {c.tmp / 'run.yaml'}: file not found"


@case("train-config-not-yaml", entry="python -m cifar_dist.train")
def _(c):
    p = c.write("run.yaml", "optim: [1, 2\n")
    return c.train(f"--config={p}"), f"--config: {p}: not valid YAML"


@case("train-config-not-a-mapping")
def _(c):
    p = c.write("run.yaml", "- optim\n- run\n")
    return ["train", *c.train(f"--config={p}")], f"--config: {p}: expected a mapping of sections, found list"


@case("train-config-unknown-key", entry="python -m cifar_dist.train")
def _(c):
    p = c.write("run.yaml", "optim:\n  lrr: 0.1\n")
    return c.train(f"--config={p}"), "optim.lrr: unknown key"


@case("train-unknown-model")
def _(c):
    return ["train", *c.train("--model.name=resnet9000")], "--model.name"


@case("train-model-option-it-lacks", entry="python -m cifar_dist.train")
def _(c):
    return c.train("--model.c1=20"), "not an option of simple_cnn"


@case("train-over-parameter-budget")
def _(c):
    return ["train", *c.train("--model.max_params=1000")], "--model.max_params: simple_cnn has 600,746 parameters"


@case("train-stray-positional", entry="python -m cifar_dist.train")
def _(c):
    return [*c.train(), "stray"], "unexpected argument 'stray'"


@case("train-short-flag")
def _(c):
    return ["train", *c.train(), "-p", "smoke"], "unknown flag '-p'"


@case("train-flag-without-value", entry="python -m cifar_dist.train")
def _(c):
    return [*c.train(), "--preset"], "--preset expects a value"


@case("train-value-on-boolean-flag")
def _(c):
    return ["train", *c.train("--print_config=3")], "--print_config: expected true or false, found '3'"


@case("train-bad-resume-mode", entry="python -m cifar_dist.train")
def _(c):
    return c.train("--resume=sometimes"), "--resume: expected one of auto, none, force, found 'sometimes'"


@case("train-batch-not-a-multiple")
def _(c):
    return ["train", *c.train("--run.global_batch_size=100", "--optim.accum_steps=3")], \
        "--run.global_batch_size: expected a multiple of processes x accum_steps = 3, found 100"


@case("train-batch-larger-than-split", entry="python -m cifar_dist.train")
def _(c):
    return c.train("--run.global_batch_size=4096"), "--run.global_batch_size: 4096 is larger than the training split"


@case("train-limit-below-class-count")
def _(c):
    return ["train", *c.train("--data.limit_train=5")], "--data.limit_train: expected at least 10 images"


@case("train-val-split-too-large", entry="python -m cifar_dist.train")
def _(c):
    return c.train("--data.val_size=400"), "--data.val_size: expected fewer than the 400 training images"


# Values no run can use (issue 19): refused when the config is resolved, before any folder exists (the
# whole table of rules is tested row by row in tests/test_config.py).
VALUE_CASES = [
    ("optim.accum_steps", "0", "expected an integer >= 1"),
    ("run.global_batch_size", "0", "expected an integer >= 1"),
    ("run.eval_every", "0", "expected an integer >= 1"),
    ("run.eval_batch_size", "0", "expected an integer >= 1"),
    ("data.resolution", "0", "expected an integer >= 1"),
    ("data.mean", "[0.5,0.5]", "expected 3 values in [0, 1]"),
    ("loss.label_smoothing", "1.5", "expected a smoothing epsilon in [0, 1)"),
    ("run.seed", "99999999999", "expected an integer in [0, 2**31)"),
    ("run.name", "r" * 300, "expected a run directory name (non-empty, not . or .., no /, at most 255 bytes)"),
    ("run.name", "", "expected a run directory name"),
    ("run.name", "a/b", "expected a run directory name"),
    ("run.ema_decay", "2", "expected a decay in [0, 1]"),
    ("aug.cutout_prob", "5", "expected a probability in [0, 1]"),
    ("run.epochs", "0", "expected an integer >= 1"),
    ("optim.lr", "nan", "expected a finite number"),
    ("optim.lr", "inf", "expected a finite number"),
]


def _value_case(key: str, value: str, needle: str, i: int) -> None:
    @case(f"train-value-{key}-{i}", entry="python -m cifar_dist.train" if i % 2 else "cifar-dist")
    def _(c):
        argv = [a for a in c.train() if not a.startswith(f"--{key}=")] + [f"--{key}={value}"]
        return (argv if i % 2 else ["train", *argv]), f"--{key}: {needle}"


for _i, (_key, _value, _needle) in enumerate(VALUE_CASES):
    _value_case(_key, _value, _needle, _i)


def _copy_data(c: Ctx, name: str) -> Path:
    src, tiny = c.data
    d = c.tmp / name
    d.mkdir()
    for p in src.glob(f"{tiny}_*"):
        shutil.copy2(p, d / p.name)
    return d


@case("train-torn-manifest")
def _(c):
    d = _copy_data(c, "torn")
    p = d / "tiny_manifest.json"
    p.write_bytes(p.read_bytes()[:40])
    return ["train", *c.train(f"--data.dir={d}")], f"{p}: expected the JSON manifest `cifar-dist prepare` writes"


@case("train-manifest-class-names-not-a-list", entry="python -m cifar_dist.train")
def _(c):
    d = _copy_data(c, "names")
    p = d / "tiny_manifest.json"
    p.write_text(json.dumps({**json.loads(p.read_text()), "class_names": "cat,dog"}))
    return c.train(f"--data.dir={d}"), f"{p}: expected an object with class_names, a non-empty list of names"


@case("train-manifest-names-3-classes-of-10")
def _(c):
    d = _copy_data(c, "three")
    p = d / "tiny_manifest.json"
    p.write_text(json.dumps({**json.loads(p.read_text()), "class_names": ["a", "b", "c"]}))
    return ["train", *c.train(f"--data.dir={d}")], \
        f"{d / 'tiny_train.beton'}: expected labels 0..2 (the 3 classes of {p}), found labels 0..9"


@case("train-beton-with-more-classes-than-the-manifest", entry="python -m cifar_dist.train")
def _(c):
    d = _copy_data(c, "more")
    p = d / "tiny_manifest.json"
    p.write_text(json.dumps({**json.loads(p.read_text()), "class_names": [f"c{i}" for i in range(9)]}))
    return c.train(f"--data.dir={d}"), f"{d / 'tiny_train.beton'}: expected labels 0..8 (the 9 classes of {p})"


@case("train-truncated-beton")
def _(c):
    d = _copy_data(c, "trunc")
    p = d / "tiny_train.beton"
    p.write_bytes(p.read_bytes()[:3000])
    return ["train", *c.train(f"--data.dir={d}")], f"{p}: expected a readable .beton file"


@case("train-random-bytes-beton-ffcv-loader", entry="python -m cifar_dist.train")
def _(c):
    d = _copy_data(c, "noise")
    p = d / "tiny_test.beton"
    p.write_bytes(os.urandom(200_000))
    return c.train(f"--data.dir={d}", "--data.loader=ffcv"), f"{p}: expected a readable .beton file"


# ------------------------------------------------------------------------------------------ sweep


@case("sweep-no-command")
def _(c):
    return ["sweep"], "cifar-dist sweep: expected a command (plan, submit, status, preempt, run, resolve, worker), found nothing"


@case("sweep-preempt-bad-task")
def _(c):
    return ["sweep", "preempt", str(c.spec()), "x"], "TASK: expected an array index (an integer >= 0), found 'x'"


@case("sweep-unknown-command")
def _(c):
    return ["sweep", "launch", str(c.spec())], "found 'launch'"


@case("sweep-plan-missing-spec")
def _(c):
    return ["sweep", "plan", str(c.tmp / "nope.yaml")], f"{c.tmp / 'nope.yaml'}: file not found"


@case("sweep-plan-not-yaml")
def _(c):
    p = c.spec("name: x\ngrid: [\n")
    return ["sweep", "plan", str(p)], f"{p}: not valid YAML"


@case("sweep-plan-unknown-spec-key")
def _(c):
    p = c.spec(SPEC + "grd:\n  optim.lr: [0.1]\n")
    return ["sweep", "plan", str(p)], f"{p}: grd: expected a known key"


@case("sweep-plan-unknown-override-key")
def _(c):
    p = c.spec(SPEC.replace("optim.lr:", "optim.lrr:"))
    return ["sweep", "plan", str(p)], f"{p}: grid.optim.lrr: unknown key"


@case("sweep-plan-budget-drops-every-cell")
def _(c):
    p = c.spec(SPEC + "constraints:\n  max_params: 1000\n")
    return ["sweep", "plan", str(p)], f"{p}: constraints.max_params: expected a budget that keeps at least one"


@case("sweep-plan-bad-random-bounds")
def _(c):
    p = c.spec("name: r\npreset: smoke\nrandom:\n  samples: 2\n  params:\n    optim.lr: {loguniform: [0, 0.1]}\n")
    return ["sweep", "plan", str(p)], f"{p}: random.params.optim.lr.loguniform: expected [low, high] with 0 < low"


@case("sweep-plan-bad-parallel")
def _(c):
    return ["sweep", "plan", str(c.spec()), "--parallel=0"], "--parallel: expected a positive integer, found 0"


@case("sweep-plan-changed-spec-of-a-started-run")
def _(c):
    p = c.spec()
    assert cli_main(["sweep", "plan", str(p)]) == 0
    (c.tmp / "runs" / "small" / "c001-s0").mkdir()
    c.spec(SPEC.replace("2e-3", "3e-3"))
    return ["sweep", "plan", str(p)], f"{p}: c001: expected the overrides c001-s0 started with"


@case("sweep-plan-arguments-after-double-dash")
def _(c):
    return ["sweep", "plan", str(c.spec()), "--", "--partition=gpu"], "sweep plan: unexpected arguments after --"


@case("sweep-submit-dry-run-bad-spec")
def _(c):
    p = c.spec("name: bad name!\npreset: smoke\n")
    return ["sweep", "submit", str(p), "--dry-run"], f"{p}: name: expected a sweep name"


@case("sweep-submit-value-on-boolean-flag")
def _(c):
    return ["sweep", "submit", str(c.spec()), "--dry-run=2"], "--dry-run: expected true or false, found '2'"


@case("sweep-submit-unknown-flag")
def _(c):
    return ["sweep", "submit", str(c.spec()), "--dry-run", "--partition=gpu"], \
        "cifar-dist sweep submit: unknown flag --partition"


@case("sweep-status-value-on-boolean-flag")
def _(c):
    return ["sweep", "status", str(c.spec()), "--json=3"], "--json: expected true or false, found '3'"


@case("sweep-status-extra-argument")
def _(c):
    return ["sweep", "status", str(c.spec()), "now"], "cifar-dist sweep status: unexpected argument 'now'"


@case("sweep-status-bad-spec")
def _(c):
    p = c.spec(SPEC + "seeds: []\n")
    return ["sweep", "status", str(p)], f"{p}: seeds: expected a non-empty list"


@case("sweep-run-local-false")
def _(c):
    return ["sweep", "run", str(c.spec()), "--local=false"], "sweep run: --local=false: `sweep run` trains on this"


@case("sweep-run-bad-procs")
def _(c):
    return ["sweep", "run", str(c.spec()), "--local", "--procs=0"], "--procs: expected a positive integer, found 0"


@case("sweep-run-bad-procs-environment", env={"CIFAR_DIST_CPU_PROCS": "two"})
def _(c):
    return ["sweep", "run", str(c.spec()), "--local"], "CIFAR_DIST_CPU_PROCS: expected a positive integer, found 'two'"


@case("sweep-resolve-index-not-an-integer")
def _(c):
    return ["sweep", "resolve", str(c.spec()), "first"], "INDEX: expected an integer, found 'first'"


@case("sweep-resolve-index-out-of-range")
def _(c):
    p = c.spec()
    return ["sweep", "resolve", str(p), "99"], f"{p}: array index: expected 0..1, found 99"


@case("sweep-resolve-missing-index")
def _(c):
    return ["sweep", "resolve", str(c.spec())], "cifar-dist sweep resolve: missing argument INDEX"


@case("sweep-resolve-fire-separator")
def _(c):
    return ["sweep", "resolve", str(c.spec()), "-"], "cifar-dist sweep resolve: unexpected argument '-'"


SEARCH_SPEC = ("name: srch\npreset: smoke\nfixed:\n  data.dir: data\n  data.val_size: 100\nsearch:\n  pruner: asha\n"
               "  objective: val_acc\n  trials: 2\n  epochs: {min: 1, max: 2, reduction_factor: 2}\n"
               "  sampler: random\n  seed: 0\ngrid:\n  optim.lr: [1e-3, 2e-3]\n")


@case("sweep-status-corrupt-study-journal")
def _(c):
    p = c.spec(SEARCH_SPEC)
    c.write("runs/srch/study.journal", '{"op_code": 0, "worker_id": "x", "study_name": "srch", "directions": [1]}\n'
                                       '{garbage\n{"op_code": 0}\n')
    return ["sweep", "status", str(p)], "runs/srch/study.journal: expected an Optuna journal of this search, found a damaged"


@case("sweep-status-study-journal-of-nonsense-ops")
def _(c):
    p = c.spec(SEARCH_SPEC)
    c.write("runs/srch/study.journal", '{"op_code": 99}\n')
    return ["sweep", "status", str(p)], "runs/srch/study.journal: expected an Optuna journal of this search"


# ------------------------------------------------------------------------------------------ report


@case("report-missing-directory")
def _(c):
    return ["report", str(c.tmp / "absent")], f"{c.tmp / 'absent'}: no such directory"


@case("report-a-file")
def _(c):
    p = c.write("a_file", "x")
    return ["report", str(p)], f"{p}: expected a sweep or run directory, found a file"


@case("report-no-runs")
def _(c):
    (c.tmp / "sweep" / "notes").mkdir(parents=True)
    return ["report", str(c.tmp / "sweep")], f"{c.tmp / 'sweep'}: no run directories"


@case("report-metrics-not-json")
def _(c):
    d = c.run_dir(GOOD_ROW + '{"epoch": 2, "test_acc": \n')
    return ["report", str(d.parent)], f"{d / 'metrics.jsonl'}:2: expected one JSON object per line"


@case("report-metrics-row-without-epoch")
def _(c):
    d = c.run_dir(GOOD_ROW + '{"step": 6}\n')
    return ["report", str(d.parent)], f"{d / 'metrics.jsonl'}:2: expected an object with an integer \"epoch\""


@case("report-result-not-json")
def _(c):
    d = c.run_dir(result="{not json")
    return ["report", str(d.parent)], f"{d / 'result.json'}: not valid JSON"


@case("report-result-wrong-shape")
def _(c):
    d = c.run_dir(result=json.dumps({"final": {"test_acc": "high"}, "best": {}}))
    return ["report", str(d.parent)], f"{d / 'result.json'}: expected a number at final.test_acc"


@case("report-sweep-json-wrong-shape")
def _(c):
    d = c.run_dir()
    c.write("sweep/sweep.json", '{"cells": 3}')
    return ["report", str(d.parent)], f"{d.parent / 'sweep.json'}: expected an object with a list under \"cells\""


@case("report-config-not-yaml")
def _(c):
    d = c.run_dir()
    c.write("sweep/c000-s0/config.yaml", "optim: [1, 2\n")
    return ["report", str(d)], f"{d / 'config.yaml'}: not valid YAML"


@case("report-unknown-metric")
def _(c):
    return ["report", str(c.run_dir().parent), "--metric=accuracy"], "--metric: expected one of best_val_acc"


@case("report-unknown-flag")
def _(c):
    return ["report", str(c.run_dir().parent), "--colour=red"], "cifar-dist report: unknown flag --colour"


@case("report-value-on-unknown-boolean")
def _(c):
    return ["report", str(c.run_dir().parent), "--json=3"], "cifar-dist report: unknown flag --json"


@case("report-flag-without-value")
def _(c):
    return ["report", str(c.run_dir().parent), "--out"], "cifar-dist report: --out expects a value"


@case("report-missing-path")
def _(c):
    return ["report"], "cifar-dist report: missing argument PATH"


# ------------------------------------------------------------------------------------------ the matrix


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
@pytest.mark.slow
def test_bad_input(case: Case, tmp_path, request, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    ctx = Ctx(tmp_path, request)
    argv, needle = case.build(ctx)
    roots = [tmp_path, *ctx.roots]
    before, procs = snapshot(*roots), our_processes()
    capsys.readouterr()
    rc = ENTRIES[case.entry](argv)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out[-2000:], err[-2000:])
    assert_one_error_line(err, needle)
    assert "Traceback" not in out
    assert changes(before, snapshot(*roots)) == []
    assert not (tmp_path / "pwned").exists()
    assert our_processes() <= procs


def test_the_matrix_is_large_enough():
    entries = {c.id.split("-")[0] for c in CASES}
    assert len(CASES) >= 40 and {"prepare", "train", "sweep", "report"} <= entries


def test_only_the_first_process_of_a_launcher_prints(monkeypatch, capsys):
    """Under torchrun every process parses the flags: LOCAL_RANK 1 exits 2 without a word (after giving
    LOCAL_RANK 0 the time to print: the wait is timed, and the launcher ends it when LOCAL_RANK 0 exits)."""
    import time

    from cifar_dist import runner as flags

    monkeypatch.setattr(flags, "QUIET_RANK_WAIT_S", 0.5)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "1")
    t0 = time.monotonic()
    assert train_main(["--bogus=1"]) == 2
    assert time.monotonic() - t0 >= 0.5
    t0 = time.monotonic()
    assert train_main(["--help"]) == 0
    assert time.monotonic() - t0 < 0.5  # no wait where nothing failed
    assert capsys.readouterr() == ("", "")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert train_main(["--bogus=1"]) == 2
    assert_one_error_line(capsys.readouterr().err, "unknown flag --bogus")


def test_parse_failures_are_one_quiet_line(capsys):
    """What the one parse refuses (a missing positional argument) is one line, never a usage text."""
    from cifar_dist.runner import run_schema
    from cifar_dist.schema import opt

    @dataclass(frozen=True)
    class NeedsTwo:
        """Takes A and B."""

        a: int = opt(help="first")
        b: int = opt(help="second")

    ran = []
    assert run_schema(lambda **kw: ran.append(kw), NeedsTwo, ["1"], "prog") == 2 and ran == []
    assert capsys.readouterr() == ("", "error: prog: missing argument B (see prog --help)\n")


@pytest.mark.parametrize("on, off", [("--json", "--nojson"), ("--json=true", "--json=false"),
                                     ("--json=True", "--json=FALSE"), ("--json=yes", "--json=no"),
                                     ("--json=1", "--json=0")])
def test_boolean_flags_take_true_and_false(on, off):
    """`--json=false` is false (Fire alone would have passed the string 'false' on, which is true)."""
    from cifar_dist.runner import run_schema
    from cifar_dist.schema import opt

    @dataclass(frozen=True)
    class JsonFlag:
        """Prints JSON or not."""

        json: bool = opt(False, "print JSON")

    seen = []

    def cmd(*, json: bool) -> int:
        seen.append(json)
        return 0

    assert run_schema(cmd, JsonFlag, [on], "prog") == 0 and run_schema(cmd, JsonFlag, [off], "prog") == 0
    assert seen == [True, False]


# ------------------------------------------------------------------------------------------ help, version


HELP_COMMANDS = [[], ["prepare"], ["train"], ["models"], ["presets"], ["sweep"], ["sweep", "plan"],
                 ["sweep", "submit"], ["sweep", "status"], ["sweep", "run"], ["sweep", "resolve"], ["report"]]


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("cmd", HELP_COMMANDS, ids=lambda c: " ".join(c) or "cifar-dist")
def test_help_goes_to_stdout_with_status_0(cmd, flag, capsys):
    assert cli_main([*cmd, flag]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.strip()


@pytest.mark.parametrize("entry", ["python -m data_prep", "python -m cifar_dist.train"])
def test_module_help_goes_to_stdout_with_status_0(entry, capsys):
    assert ENTRIES[entry](["--help"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and ("--out" in out or "--optim.lr" in out)


def test_version_is_one_line(capsys):
    from cifar_dist.cli import version

    assert cli_main(["--version"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out == f"cifar-dist {version()}\n" and version()[0].isdigit()


# ------------------------------------------------------------------------------------------ real processes


def run_session(cmd: list[str], cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run `cmd` in its own session; after it ends, no process of that session may be left."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                "OMP_NUM_THREADS": "1", **env}
    p = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"{' '.join(cmd)} did not end within {timeout} s:\n{err[-3000:]}")
    deadline = time.monotonic() + 5
    while session_processes(p.pid) and time.monotonic() < deadline:  # torchrun's workers get a moment
        time.sleep(0.1)
    left = session_processes(p.pid)
    if left:
        os.killpg(p.pid, signal.SIGKILL)
    assert not left, f"processes left running after {' '.join(cmd)}: {left}"
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


@pytest.mark.parametrize("module, argv, needle", [
    ("cifar_dist", ["train", "--preset=smoke", "--optim.lr=abc"], "--optim.lr: expected a number, found 'abc'"),
    ("cifar_dist", ["prepare", "SRC", "--out", "data", "--bogus", "1"], "cifar-dist prepare: unknown flag --bogus"),
    ("data_prep", ["MISSING", "--out", "data"], "MISSING: expected an existing archive or folder"),
], ids=["cifar-dist-train", "cifar-dist-prepare-bogus", "data-prep-missing"])
def test_real_process_exits_2_with_one_line(module, argv, needle, tmp_path):
    archive = make_cifar10_archive(tmp_path)[0]
    argv = [str(archive) if a == "SRC" else str(tmp_path / a) if a == "MISSING" else a for a in argv]
    before = snapshot(tmp_path)
    p = run_session([sys.executable, "-m", module, *argv], cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert_one_error_line(p.stderr, needle)
    assert changes(before, snapshot(tmp_path)) == []


def accelerate_launch(config: str, *args: str) -> list[str]:
    script = Path(sys.executable).with_name("accelerate")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "accelerate.commands.accelerate_cli"]
    port = ["--main_process_port", str(free_port())] if config == "cpu.yaml" else []  # see launch_cpu_two
    return [*head, "launch", *args, "--config_file", str(REPO / "launch" / config), *port, "-m", "cifar_dist.train"]


@pytest.mark.slow
@pytest.mark.parametrize("flags, needle, late_s", [
    (["--bogus=1"], "cifar_dist.train: unknown flag --bogus", 0),
    (["--preset=smoke", "--optim.lr=abc"], "--optim.lr: expected a number, found 'abc'", 0),
    (["--bogus=1"], "cifar_dist.train: unknown flag --bogus", 3),
], ids=["unknown-flag", "bad-value", "unknown-flag-rank0-late"])
def test_accelerate_launch_two_processes_print_the_error_once(flags, needle, late_s, tmp_path):
    """`accelerate launch` (torchrun) exits 1 with its ChildFailedError report whatever the children's
    status (README); the children exit 2 and only LOCAL_RANK 0 prints the error line, also when it starts
    late (tests/late_start.py: the silent process waits for it instead of having it stopped unheard)."""
    before = snapshot(tmp_path)
    launch = accelerate_launch("cpu.yaml")
    if late_s:
        launch[launch.index("-m"):] = [str(REPO / "tests" / "late_start.py")]
    p = run_session(launch + flags, cwd=tmp_path, CIFAR_DIST_TEST_LATE_S=str(late_s))
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and needle in errors[0], p.stderr
    assert p.returncode == 1, p.stderr
    assert "exitcode  : 2" in p.stderr  # the root cause the launcher reports
    assert "cifar_dist/" not in p.stderr  # no traceback through our code
    assert changes(before, snapshot(tmp_path)) == []


@pytest.mark.slow
def test_accelerate_launch_quiet_single_process_is_one_line(tmp_path):
    """One process (launch/1gpu.yaml) with --quiet: the launcher adds no traceback; it exits 1."""
    p = run_session(accelerate_launch("1gpu.yaml", "--quiet") + ["--bogus=1"], cwd=tmp_path)
    assert p.returncode == 1
    assert_one_error_line(p.stderr, "cifar_dist.train: unknown flag --bogus")


# ------------------------------------------------------------------------------------------ issue 11 rows
# Checkpoint safety, run-directory lock, resume config check, disk full, metrics repair: being built on
# other branches. Each runs the trainer as a real process (a crafted pickle must not run in any process).


def trainer(data: tuple[Path, str], out: Path, name: str, *extra: str) -> list[str]:
    data_dir, data_name = data
    return [sys.executable, "-m", "cifar_dist.train", "--preset=smoke", f"--data.dir={data_dir}",
            f"--data.name={data_name}", f"--run.out_dir={out}", f"--run.name={name}", "--run.progress=false",
            "--run.ema=true", *extra]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_data):
    """One epoch of the smoke preset with EMA: checkpoints/last holds ema.pt (the EMA), rng_0.pt, optimizer.pt."""
    out = tmp_path_factory.mktemp("finished")
    p = run_session(trainer(tiny_data, out, "base"), cwd=out)
    assert p.returncode == 0, p.stderr[-3000:]
    return out / "base"


def _unlocked(snap: dict[str, tuple]) -> dict[str, tuple]:
    """A run directory's snapshot without its lock file (a resume takes the run's lock, and .lock names the
    holder); status.json is compared too: a refusal never rewrites it."""
    return {p: v for p, v in snap.items() if "lock" not in Path(p).name.lower()}


def _resume_case(finished_run, tiny_data, tmp_path, spoil: Callable[[Path], None], *extra: str):
    run_dir = tmp_path / "base"
    shutil.copytree(finished_run, run_dir)
    spoil(run_dir / "checkpoints" / "last")
    before = _unlocked(snapshot(run_dir))
    p = run_session(trainer(tiny_data, tmp_path, "base", "--resume=auto", "--run.epochs=2", *extra), cwd=tmp_path)
    return p, changes(before, _unlocked(snapshot(run_dir)))


@pytest.mark.slow
@pytest.mark.parametrize("member", ["ema.pt", "rng_0.pt", "optimizer.pt"])
def test_crafted_pickle_in_a_checkpoint_never_runs(member, finished_run, tiny_data, tmp_path):
    marker = tmp_path / "pwned"
    p, changed = _resume_case(finished_run, tiny_data, tmp_path,
                              lambda last: (last / member).write_bytes(pickle.dumps(_Evil(marker))))
    assert not marker.exists(), "the crafted pickle ran"
    assert p.returncode == 2, p.stderr[-3000:]
    assert_one_error_line(p.stderr, member)
    assert changed == []


@pytest.mark.slow
@pytest.mark.parametrize("member", ["model.safetensors", "train_state.json"])
def test_truncated_checkpoint_file_is_one_line(member, finished_run, tiny_data, tmp_path):
    def spoil(last: Path) -> None:
        data = (last / member).read_bytes()
        (last / member).write_bytes(data[: len(data) // 2])

    p, changed = _resume_case(finished_run, tiny_data, tmp_path, spoil)
    assert p.returncode == 2, p.stderr[-3000:]
    assert_one_error_line(p.stderr, member)
    assert changed == []


@pytest.mark.slow
def test_resume_with_changed_flags_names_the_keys(finished_run, tiny_data, tmp_path):
    p, changed = _resume_case(finished_run, tiny_data, tmp_path, lambda last: None, "--optim.lr=0.5")
    assert p.returncode == 2, p.stderr[-3000:]
    assert_one_error_line(p.stderr, "optim.lr")
    assert changed == []


@pytest.mark.slow
def test_second_run_with_the_same_name_exits_2_naming_the_holder(tiny_data, tmp_path):
    first = subprocess.Popen(trainer(tiny_data, tmp_path, "same", "--run.epochs=500", "--data.val_size=0"),
                             cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                             env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    try:
        run_dir = tmp_path / "same"
        deadline = time.monotonic() + 300
        # env.json is the last of the start files the first run writes: the snapshot must not race them
        while not (run_dir / "env.json").is_file() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert first.poll() is None and (run_dir / "env.json").is_file(), "the first run did not start"
        watched = [run_dir / n for n in ("config.yaml", "command.txt", "env.json")]
        before = {p: p.read_bytes() for p in watched if p.is_file()}
        # one short epoch: without a lock the second run trains beside the first (and this test fails)
        p = run_session(trainer(tiny_data, tmp_path, "same", "--run.epochs=1", "--data.limit_train=200",
                                "--data.val_size=0"), cwd=tmp_path)
        assert p.returncode == 2, p.stderr[-3000:]
        assert_one_error_line(p.stderr, str(first.pid))
        assert socket.gethostname().split(".")[0] in p.stderr
        assert {p: p.read_bytes() for p in watched if p.is_file()} == before
        os.killpg(first.pid, signal.SIGKILL)  # the kernel releases the lock of a killed run
        first.wait()
        # the lock is free: this run gets past it, to the next refusal (one run, one folder: issue 19), and a
        # free name trains
        p = run_session(trainer(tiny_data, tmp_path, "same", "--run.epochs=1", "--data.limit_train=200",
                                "--data.val_size=0"), cwd=tmp_path)
        assert p.returncode == 2, p.stderr[-3000:]
        assert_one_error_line(p.stderr, f"{run_dir}: holds a run already")
        p = run_session(trainer(tiny_data, tmp_path, "same-2", "--run.epochs=1", "--data.limit_train=200",
                                "--data.val_size=0"), cwd=tmp_path)
        assert p.returncode == 0, p.stderr[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()


@pytest.mark.slow
def test_partial_metrics_line_is_repaired_on_resume(finished_run, tiny_data, tmp_path):
    def spoil(last: Path) -> None:
        metrics = last.parent.parent / "metrics.jsonl"
        metrics.write_text(metrics.read_text() + '{"epoch": 2, "train_lo')

    run_dir = tmp_path / "base"
    shutil.copytree(finished_run, run_dir)
    spoil(run_dir / "checkpoints" / "last")
    p = run_session(trainer(tiny_data, tmp_path, "base", "--resume=auto", "--run.epochs=2"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "metrics.jsonl" in p.stdout + p.stderr  # the repair is reported
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 6 MB tmpfs mounted for the test."""
    with mounted_tmpfs(tmp_path / "tmpfs", 6) as mnt:
        yield mnt


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_is_one_line(tiny_data, small_tmpfs):
    p = run_session(trainer(tiny_data, small_tmpfs, "full", "--run.checkpoint_every_steps=1"), cwd=small_tmpfs)
    assert p.returncode == 2, p.stderr[-3000:]
    errors = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and str(small_tmpfs) in errors[0], p.stderr
    assert not (small_tmpfs / "full" / "result.json").exists()


@pytest.mark.slow
def test_prepare_on_a_full_disk_is_one_line_and_never_hangs(small_tmpfs, tmp_path):
    archive, _ = make_cifar10_archive(tmp_path, per_batch=40, n_test=40)
    p = run_session([sys.executable, "-m", "cifar_dist", "prepare", str(archive), "--out", str(small_tmpfs / "data")],
                    cwd=tmp_path, timeout=180)
    assert p.returncode == 2, p.stderr[-3000:]
    assert_one_error_line(p.stderr, str(small_tmpfs / "data"))
    assert not any((small_tmpfs / "data").glob("*.beton")) if (small_tmpfs / "data").exists() else True


@pytest.mark.slow
def test_nan_before_any_checkpoint_claims_no_checkpoint(tiny_data, tmp_path):
    p = run_session(trainer(tiny_data, tmp_path, "nan", "--optim.name=sgd", "--optim.lr=1e30",
                            "--run.log_every_steps=1", "--run.epochs=2"), cwd=tmp_path)
    assert p.returncode == 4, p.stderr[-3000:]
    assert "non-finite loss" in p.stderr
    assert (tmp_path / "nan" / "checkpoints" / "last").is_dir() or "checkpoint kept" not in p.stderr


# ------------------------------------------------------------------------------------------ run folders (issue 19)
# A refused command changes nothing: each row copies one tiny finished run (1 epoch, validation split, EMA:
# checkpoints/last and checkpoints/best), spoils it, runs the trainer in-process and compares the folder's
# names, sizes, mtimes and hashes before and after. Only `.lock` may change: it names the last process that
# held the run's lock (the lock itself is an OS lock on the directory).


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_data):
    out = tmp_path_factory.mktemp("tiny_run")
    p = run_session(trainer(tiny_data, out, "base", "--data.val_size=100"), cwd=out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (out / "base" / "checkpoints" / "best" / "model.pt").is_file()
    return out / "base"


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _other_weights(path: Path) -> None:
    import torch

    buf = __import__("io").BytesIO()
    torch.save({"model": {"fc.weight": torch.zeros(3, 3)}, "epoch": 1, "val_acc": 50.0}, buf)
    path.write_bytes(buf.getvalue())


LAST = Path("checkpoints") / "last"
STATE_JSON = LAST / "train_state.json"
# id -> (spoil the run folder, extra flags, the text the one error line must hold)
RUN_FOLDER_CASES: dict[str, tuple[Callable[[Path], None], list[str], str]] = {
    "fresh-run-into-a-finished-run": (lambda d: None, ["--resume=none"],
                                      "holds a run already (config.yaml, metrics.jsonl, result.json, checkpoints"),
    "fresh-run-names-resume-and-a-free-name": (lambda d: (d.parent / "base-2").mkdir(), [],
                                               "--resume=auto continues it, or choose a free name such as "
                                               "--run.name=base-3"),
    "resume-with-a-changed-lr": (lambda d: None, ["--resume=auto", "--optim.lr=0.5"],
                                 "these keys cannot change on resume"),
    "metrics-bad-first-line": (lambda d: (d / "metrics.jsonl").write_text("garbage\n" + (d / "metrics.jsonl").read_text()),
                               ["--resume=auto"], "metrics.jsonl:1: expected one JSON object per line"),
    "best-model-truncated": (lambda d: (d / "checkpoints/best/model.pt").write_bytes(
        (d / "checkpoints/best/model.pt").read_bytes()[:500]), ["--resume=auto"], "best/model.pt: cannot load"),
    "best-model-of-another-model": (lambda d: _other_weights(d / "checkpoints/best/model.pt"), ["--resume=auto"],
                                    "best/model.pt: does not fit this run"),
    "train-state-negative-epoch": (lambda d: _edit_json(d / STATE_JSON, epoch=-5), ["--resume=auto"],
                                   "train_state.json: cannot load (ValueError: epoch: expected a finite value >= 0"),
    "train-state-epoch-a-string": (lambda d: _edit_json(d / STATE_JSON, epoch="1"), ["--resume=auto"],
                                   "train_state.json: cannot load (ValueError: epoch: expected a number, found '1')"),
    "train-state-step-past-the-epoch": (lambda d: _edit_json(d / STATE_JSON, step_in_epoch=10**9), ["--resume=auto"],
                                        "step_in_epoch: expected at most 3 (this run's steps per epoch)"),
    "train-state-unknown-key": (lambda d: _edit_json(d / STATE_JSON, epochs=3), ["--resume=auto"],
                                "train_state.json: cannot load (ValueError: unknown key 'epochs')"),
    "finished-run-without-checkpoints": (lambda d: shutil.rmtree(d / "checkpoints"), ["--resume=auto"],
                                         "holds a finished run (result.json) but no checkpoint to resume from"),
}


@pytest.mark.parametrize("spoil, flags, needle", list(RUN_FOLDER_CASES.values()), ids=list(RUN_FOLDER_CASES))
@pytest.mark.slow
def test_a_refused_command_leaves_the_run_folder_as_it_was(spoil, flags, needle, tiny_run, tiny_data, tmp_path,
                                                           capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "base"
    shutil.copytree(tiny_run, run_dir)
    spoil(run_dir)
    assert json.loads((run_dir / STATUS_FILE).read_text())["state"] == "finished"
    before = _no_lock(snapshot(tmp_path))
    capsys.readouterr()
    argv = trainer(tiny_data, tmp_path, "base", "--data.val_size=100", "--run.epochs=2", *flags)[3:]
    rc = train_main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (out[-2000:], err[-2000:])
    assert_one_error_line(err, needle)
    assert changes(before, _no_lock(snapshot(tmp_path))) == []  # status.json and result.json included


def _no_lock(snap: dict[str, tuple]) -> dict[str, tuple]:
    return {p: v for p, v in snap.items() if Path(p).name != ".lock"}


def test_a_refused_fresh_run_leaves_no_folder(tiny_data, tmp_path, capsys, monkeypatch):
    """The lock creates the run folder before any data is read; a refusal before the run wrote anything
    (here: a data folder without the .beton files) removes it again."""
    monkeypatch.chdir(tmp_path)
    rc = train_main(trainer((tmp_path / "nodata", "tiny"), tmp_path, "new")[3:])
    assert rc == 2
    assert_one_error_line(capsys.readouterr().err, "tiny_train.beton: file not found")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


LOCK_HOLDER = """
import sys, time
from pathlib import Path
from cifar_dist.engine.rundir import lock_run_dir
lock_run_dir(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(120)
"""


def test_deleting_the_lock_file_lets_no_second_trainer_in(tiny_run, tiny_data, tmp_path, capsys, monkeypatch):
    """The lock is flock on the run directory: with `.lock` deleted, a second trainer is still refused, in
    one line, before it reads any data, and leaves the live run's status.json alone."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "base"
    shutil.copytree(tiny_run, run_dir)
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        (run_dir / ".lock").unlink()
        before = snapshot(tmp_path)
        capsys.readouterr()
        # a data folder that does not exist: a trainer that read data before the lock would name it instead
        argv = trainer((tmp_path / "nodata", "tiny"), tmp_path, "base", "--resume=auto")[3:]
        assert train_main(argv) == 2
        assert_one_error_line(capsys.readouterr().err, f"{run_dir}: in use by another run")
        assert changes(before, snapshot(tmp_path)) == []
    finally:
        holder.kill()
        holder.wait()


SWEEP_LOCK_HOLDER = """
import sys, time
from pathlib import Path
from cifar_dist.sweep.local import lock_sweep
lock_sweep(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_local_runner_of_one_sweep_is_one_line(tmp_path, capsys, monkeypatch):
    """One lock per sweep folder: a second `sweep run --local` exits 2 in one line naming the first runner,
    before it writes anything or starts any trainer."""
    monkeypatch.chdir(tmp_path)
    spec = Ctx(tmp_path, None).spec()
    assert cli_main(["sweep", "plan", str(spec)]) == 0
    sweep_dir = tmp_path / "runs" / "small"
    holder = subprocess.Popen([sys.executable, "-c", SWEEP_LOCK_HOLDER, str(sweep_dir)], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        before, procs = snapshot(tmp_path), our_processes()
        capsys.readouterr()
        assert cli_main(["sweep", "run", str(spec), "--local"]) == 2
        assert_one_error_line(capsys.readouterr().err, "runs/small: another `sweep run --local` of this sweep is "
                                                      f"running (pid {holder.pid})")
        assert changes(before, snapshot(tmp_path)) == []
        assert our_processes() - procs == set()
    finally:
        holder.kill()
        holder.wait()


def test_report_on_a_full_disk_is_one_line_and_writes_nothing(small_tmpfs, capsys):
    ctx = Ctx(small_tmpfs, None)
    for seed in range(3):
        ctx.run_dir(GOOD_ROW, json.dumps({"status": "finished", "final": {"test_acc": 40.0 + seed}, "best": {}}),
                    rel=f"sweep/c000-s{seed}")
    st = os.statvfs(small_tmpfs)
    # no block left: the report's table cannot be written (a one-cell sweep draws no plots to fill the disk)
    (small_tmpfs / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize))
    before = snapshot(small_tmpfs)
    capsys.readouterr()
    assert cli_main(["report", str(small_tmpfs / "sweep")]) == 2
    assert_one_error_line(capsys.readouterr().err, "disk full")
    after = snapshot(small_tmpfs)
    assert [c for c in changes(before, after) if not c.endswith("report_plots")] == []  # at most an empty folder


# ------------------------------------------------------------------------------------------ Ctrl-C (issue 19)


def _launch_cmd(launch: str, flags: list[str]) -> list[str]:
    if launch == "python":
        return [sys.executable, "-m", "cifar_dist.train", *flags]
    config = "1gpu.yaml" if launch == "accelerate-1-process" else "cpu.yaml"
    # --quiet: the one-process launcher's own CalledProcessError traceback for a non-zero status (README)
    return accelerate_launch(config, *(["--quiet"] if launch == "accelerate-1-process" else [])) + flags


@pytest.mark.parametrize("launch", [
    "python", pytest.param("accelerate-1-process", marks=pytest.mark.slow),
    pytest.param("accelerate-2-processes", marks=pytest.mark.slow)])
@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_exits_3_and_resumes(launch, tiny_data, tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it: the trainer(s) checkpoint and exit 3
    with one line, no traceback, status.json says "stopped", and --resume=auto goes on with one run's rows."""
    flags = trainer(tiny_data, tmp_path, "int", "--run.epochs=500", "--run.log_every_steps=1")[3:]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(_launch_cmd(launch, flags), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        metrics, deadline = tmp_path / "int" / "metrics.jsonl", time.monotonic() + 300
        while not metrics.is_file() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert p.poll() is None and metrics.is_file(), "the run did not finish its first epoch"
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    # the launchers' own statuses (README): 1 for any non-zero trainer, or 130 when their Ctrl-C handling ran
    assert p.returncode in {"python": {3}, "accelerate-1-process": {1, 130}, "accelerate-2-processes": {130}}[launch], err
    assert "Traceback" not in err, err[-3000:]
    stops = [ln for ln in err.splitlines() if ln.startswith("stopped by signal")]
    assert len(stops) == 1 and "resume with --resume=auto" in stops[0], err[-3000:]
    status = json.loads((tmp_path / "int" / STATUS_FILE).read_text())
    assert (status["exit"], status["state"]) == (3, "stopped")
    assert (tmp_path / "int" / "checkpoints" / "last" / "checkpoint.json").is_file()
    done = len(metrics.read_text().splitlines())
    again = run_session(trainer(tiny_data, tmp_path, "int", f"--run.epochs={done + 1}", "--resume=auto"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [json.loads(ln)["epoch"] for ln in metrics.read_text().splitlines()] == list(range(1, done + 2))


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("when", ["reading", "writing"])
@pytest.mark.slow
def test_a_signal_to_prepare_leaves_no_temporaries(sig, status, when, tmp_path):
    """Ctrl-C or SIGTERM while `prepare` reads its source or writes the .beton files: one line, exit 130 / 143
    (README), no temporaries, no output files and no process left."""
    archive, _ = make_cifar10_archive(tmp_path, per_batch=1000, n_test=1000)
    out = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "cifar_dist", "prepare", str(archive), "--out", str(out),
                          "--num_workers", "1"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while p.poll() is None and time.monotonic() < deadline:
            seen = list(out.glob(".*.tmp-*")) if out.is_dir() else []
            if (when == "writing" and seen) or (when == "reading" and out.is_dir() and not seen):
                break
            time.sleep(0.01)
        assert p.poll() is None, f"prepare ended before it was {when}"
        os.killpg(p.pid, sig)  # a terminal's Ctrl-C reaches the whole group; SIGTERM as a scheduler sends it
        out_text, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == status, err[-3000:]
    assert_one_error_line(err, f"stopped by {sig.name}; no output files were changed")
    assert not list(out.glob("*")) if out.is_dir() else True, sorted(p.name for p in out.iterdir())
    deadline = time.monotonic() + 1  # the children the signal reached: gone within a second
    while session_processes(p.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not session_processes(p.pid)


def test_make_run_twice_keeps_one_run(tiny_run, tiny_data, tmp_path, capsys, monkeypatch):
    """`make run` passes --resume=auto: a second run of a finished run succeeds and no file holds two runs'
    rows (metrics.jsonl keeps its one epoch)."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "base"
    shutil.copytree(tiny_run, run_dir)
    rows = (run_dir / "metrics.jsonl").read_text()
    argv = trainer(tiny_data, tmp_path, "base", "--data.val_size=100", "--resume=auto")[3:]
    assert train_main(argv) == 0, capsys.readouterr().err[-2000:]
    assert (run_dir / "metrics.jsonl").read_text() == rows
    assert json.loads((run_dir / "result.json").read_text())["status"] == "finished"
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == len(list(tiny_run.glob("events.out.tfevents.*")))


def test_a_loss_that_diverges_before_the_first_checkpoint(tiny_data, tmp_path, capsys, monkeypatch):
    """One line, exit 4, result.json with status "diverged" (a sweep counts the run and never retrains it),
    status.json "nonfinite", and no checkpoint claimed."""
    monkeypatch.chdir(tmp_path)
    argv = trainer(tiny_data, tmp_path, "nan", "--optim.name=sgd", "--optim.lr=1e30", "--run.log_every_steps=1",
                   "--run.epochs=2")[3:]
    capsys.readouterr()
    assert train_main(argv) == 4
    err = capsys.readouterr().err
    assert_one_error_line(err, "non-finite loss in epoch 1")
    assert "no checkpoint was saved yet" in err and not (tmp_path / "nan" / "checkpoints" / "last").exists()
    result = json.loads((tmp_path / "nan" / "result.json").read_text())
    assert result["status"] == "diverged" and result["epochs"] == 0
    assert isinstance(result["final"]["test_acc"], float)
    assert json.loads((tmp_path / "nan" / STATUS_FILE).read_text())["state"] == "nonfinite"


@pytest.mark.parametrize("directory_lockable", [True, False], ids=["flock-on-the-directory", "fallback-lock-file"])
def test_the_run_lock_is_held_by_the_kernel_not_by_a_file(directory_lockable, tmp_path, monkeypatch):
    """Another open of the locked object cannot take it, and `.lock` names the holder; where a file system
    cannot flock a directory, the .lock file is locked and rewritten in place (its inode stays the locked one)."""
    import fcntl
    import stat

    from cifar_dist.engine import rundir

    real = fcntl.flock

    def flock(fd, op):
        if not directory_lockable and stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(95, "Operation not supported")
        return real(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    run_dir = tmp_path / "runs" / "r"
    rundir.lock_run_dir(run_dir)
    try:
        target = run_dir if directory_lockable else run_dir / ".lock"
        fd = os.open(target, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                real(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            assert os.fstat(fd).st_ino == os.stat(target).st_ino
        finally:
            os.close(fd)
        assert json.loads((run_dir / ".lock").read_text()) == {"pid": os.getpid(), "host": socket.gethostname()}
        with pytest.raises(rundir.RunDirError, match="in use by another run"):  # a second holder in this process
            held = rundir._HELD.pop(str(run_dir.resolve()))
            try:
                rundir.lock_run_dir(run_dir)
            finally:
                rundir._HELD[str(run_dir.resolve())] = held
    finally:
        rundir.end_run(run_dir, 2)  # refused before anything was written: the folders it made are removed
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flag", ["--optim.lrr=0.1", "--resume=x", "--preset=nope", "--optim.lr=abc"])
def test_a_bad_trainer_flag_is_refused_before_torch_is_imported(flag):
    """Keys, types, choices, presets and --resume are checked before torch is imported (which takes seconds):
    one line, exit 2, and torch never loaded (checked in the process itself, not by a timing)."""
    code = ("import sys; from cifar_dist.cli.train import main; rc = main(sys.argv[1:]); "
            "print('torch' in sys.modules, file=sys.stderr); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, flag], capture_output=True, text=True, timeout=60)
    lines = out.stderr.splitlines()
    assert out.returncode == 2 and len(lines) == 2 and lines[0].startswith("error: --"), out.stderr
    assert lines[1] == "False", out.stderr
