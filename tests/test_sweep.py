"""Sweep specs, cells, flags, status rules, the shipped grids, generated command lines and the local runner.

The SLURM job-array tests (a real cluster) are in tests/test_slurm.py. Generated sbatch/srun command lines
are compared with tests/reference/*.txt; a missing reference fails. Regenerate with UPDATE_REFERENCE=1
and review the diff.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cifar_dist.cli.sweep import main as sweep_main
from cifar_dist.run_dir import TASK_FILE
from cifar_dist.sweep.plan import Run, Sweep, flag_value, load_sweep
from cifar_dist.sweep.slurm import array_ranges, sbatch_command, squeue_tasks
from cifar_dist.sweep.spec import draw
from cifar_dist.sweep.status import run_state, status_rows
from tests.helpers import REPO

REFERENCE = Path(__file__).parent / "reference"
# Search specs (`search:`, e.g. seed002_asha.yaml) have no cells; tests/test_search.py plans them.
GRIDS = sorted(g for g in (REPO / "slurm" / "grids").glob("*.yaml") if "\nsearch:" not in g.read_text())
HOST = socket.gethostname().split(".")[0]


def check_reference(name: str, text: str) -> None:
    """Compare `text` with tests/reference/<name>; UPDATE_REFERENCE=1 rewrites it, a missing one fails."""
    path = REFERENCE / name
    if os.environ.get("UPDATE_REFERENCE") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    if not path.is_file():
        pytest.fail(f"reference {path} is missing; generate it with UPDATE_REFERENCE=1 and review it")
    assert text == path.read_text(), f"generated text differs from {path} (UPDATE_REFERENCE=1 rewrites it)"


def write_spec(d: Path, text: str, name: str = "spec.yaml") -> Path:
    path = d / name
    path.write_text(text)
    return path


def plan(capsys, spec: Path) -> tuple[int, str, str]:
    rc = sweep_main(["plan", str(spec)])
    out, err = capsys.readouterr()
    return rc, out, err


SMALL = """\
name: small
preset: smoke
fixed:
  data.dir: data
  run.epochs: 1
grid:
  optim.lr: [1e-3, 2.0e-3]
  optim.lookahead: [true, false]
zip:
  optim.name: [adam, sgd]
  optim.weight_decay: [0, 5e-4]
seeds: 2
"""


# ------------------------------------------------------------------------------------------ expansion


def test_grid_zip_and_seeds_expand_in_a_fixed_order(tmp_path):
    s = load_sweep(write_spec(tmp_path, SMALL))
    assert [c.cell for c in s.cells] == [f"c{i:03d}" for i in range(8)]
    # first grid axis slowest, the zip group last; 1e-3 (a string for PyYAML) and 0 come back as floats
    assert s.cells[0].overrides == {"optim.lr": 0.001, "optim.lookahead": True, "optim.name": "adam",
                                    "optim.weight_decay": 0.0}
    assert s.cells[1].overrides == {"optim.lr": 0.001, "optim.lookahead": True, "optim.name": "sgd",
                                    "optim.weight_decay": 0.0005}
    assert s.cells[2].overrides["optim.lookahead"] is False
    assert s.cells[4].overrides["optim.lr"] == 0.002
    assert all(c.params == 600_746 for c in s.cells)  # smoke = simple_cnn (seed 003)
    assert all(c.preset == "smoke" and c.epochs == 1 for c in s.cells)
    runs = s.runs
    assert [(r.index, r.name, r.seed) for r in runs[:3]] == [(0, "c000-s0", 0), (1, "c000-s1", 1), (2, "c001-s0", 0)]
    assert runs[-1].index == 15 and runs[-1].name == "c007-s1"
    assert runs[5].dir == Path("runs/small/c002-s1")


def test_train_flags_of_a_run(tmp_path):
    s = load_sweep(write_spec(tmp_path, SMALL))
    assert s.train_flags(s.runs[3]) == [
        "--preset=smoke", "--data.dir=data", "--run.epochs=1",
        "--optim.lr=0.001", "--optim.lookahead=true", "--optim.name=sgd", "--optim.weight_decay=0.0005",
        "--run.out_dir=runs/small", "--run.name=c001-s1", "--run.seed=1", "--resume=auto",
    ]


def test_flags_read_back_to_the_same_config(tmp_path, monkeypatch):
    """The train CLI (its one parse, then the config's own coercion and the model's option check) turns the
    generated flags into exactly the config the sweep checked."""
    spec = write_spec(tmp_path, """\
name: rt
preset: seed002_tpsnet
grid:
  model.blocks: [[3, 3, 3]]
  optim.lr: [1.0e-6]
  run.ema: [true]
  model.dropout: [0.25]
""")
    s = load_sweep(spec)
    captured = {}

    def fake_train(cfg, resume):  # the trainer's work, after every flag was read and checked
        captured.update(cfg=cfg, resume=resume)
        return 0

    monkeypatch.setattr("cifar_dist.engine.train", fake_train)
    from cifar_dist.cli.train import main as train_main

    assert train_main(s.train_flags(s.runs[0]), prog="t") == 0
    cfg = captured["cfg"]
    assert cfg.preset == "seed002_tpsnet" and captured["resume"] == "auto"
    assert cfg.model.options["blocks"] == (3, 3, 3) and cfg.optim.lr == 1e-6 and cfg.run.ema is True
    assert cfg.model.options["dropout"] == 0.25 and cfg.run.name == "c000-s0" and cfg.run.out_dir == "runs/rt"


def test_random_search_is_reproducible_and_in_range(tmp_path):
    text = """\
name: rnd
preset: smoke
random:
  samples: 200
  seed: {seed}
  params:
    optim.lr: {{loguniform: [1.0e-4, 1.0e-1]}}
    optim.momentum: {{uniform: [0.5, 0.9]}}
    run.global_batch_size: {{randint: [1, 3]}}
    optim.name: {{choice: [sgd, adam]}}
"""
    a = load_sweep(write_spec(tmp_path, text.format(seed=7), "a.yaml"), count=False)
    b = load_sweep(write_spec(tmp_path, text.format(seed=7), "b.yaml"), count=False)
    c = load_sweep(write_spec(tmp_path, text.format(seed=8), "c.yaml"), count=False)
    draws = [cell.overrides for cell in a.cells]
    assert len(draws) == 200
    assert draws == [cell.overrides for cell in b.cells]
    assert draws != [cell.overrides for cell in c.cells]
    assert all(1e-4 <= d["optim.lr"] <= 1e-1 for d in draws)
    assert all(0.5 <= d["optim.momentum"] <= 0.9 for d in draws)
    assert {d["run.global_batch_size"] for d in draws} == {1, 2, 3}  # both ends included
    assert {d["optim.name"] for d in draws} == {"sgd", "adam"}
    assert all(float(f"{d['optim.lr']:.4g}") == d["optim.lr"] for d in draws)  # 4 significant digits
    # log-uniform: about half of the draws below the geometric midpoint 10^-2.5
    below = sum(d["optim.lr"] < 10 ** -2.5 for d in draws)
    assert 70 <= below <= 130


def test_draw_uses_the_documented_formulas():
    rng, ref = random.Random(3), random.Random(3)
    assert draw(rng, "uniform", (2.0, 4.0)) == float(f"{2.0 + 2.0 * ref.random():.4g}")
    assert draw(rng, "randint", (5, 9)) == 5 + ref.randrange(5)
    assert draw(rng, "choice", ["a", "b", "c"]) == ["a", "b", "c"][ref.randrange(3)]


def test_parameter_budget_drops_cells_with_a_message(tmp_path, capsys, monkeypatch):
    """TPSNet counts from SEED_SYSTEMS.md (verified there): [2,2,2]/C1 34 = 3,115,804, [3,3,3]/26 = 2,847,140,
    [13,13,13]/16 = 4,959,770, [7,7,7]/22 = 4,971,680; [3,3,3]/34 = 4,865,580."""
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, """\
name: budget
preset: seed002_tpsnet
zip:
  model.blocks: [[2, 2, 2], [3, 3, 3], [13, 13, 13], [7, 7, 7], [3, 3, 3]]
  model.c1: [34, 26, 16, 22, 34]
constraints:
  max_params: 4900000
  min_params: 3000000
""")
    rc, out, err = plan(capsys, spec)
    assert rc == 0, err
    record = json.loads((tmp_path / "runs" / "budget" / "sweep.json").read_text())
    assert [(c["cell"], c["overrides"]["model.c1"], c["params"]) for c in record["cells"]] == [
        ("c000", 34, 3_115_804), ("c001", 34, 4_865_580)]
    assert "dropped 3 of 5 candidates" in out
    assert "candidate 1 (model.blocks=[3,3,3] model.c1=26): 2,847,140 parameters, outside min_params 3,000,000" in out
    assert "candidate 2 (model.blocks=[13,13,13] model.c1=16): 4,959,770 parameters, outside max_params 4,900,000" in out
    assert "candidate 3 (model.blocks=[7,7,7] model.c1=22): 4,971,680 parameters, outside max_params 4,900,000" in out


def test_preset_as_an_axis(tmp_path):
    s = load_sweep(write_spec(tmp_path, """\
name: presets
fixed:
  run.epochs: 3
grid:
  preset: [seed003_simple_cnn, seed004_dsresnet_200k]
"""))
    assert [(c.preset, c.params, c.epochs) for c in s.cells] == [("seed003_simple_cnn", 600_746, 3),
                                                                  ("seed004_dsresnet_200k", 150_690, 3)]
    flags = s.train_flags(s.runs[1])
    assert flags[0] == "--preset=seed004_dsresnet_200k" and "--preset=seed003_simple_cnn" not in flags


# ------------------------------------------------------------------------------------------ plan and sweep.json


def test_plan_prints_cells_and_the_sbatch_command_and_writes_sweep_json(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, SMALL)
    rc, out, err = plan(capsys, spec)
    assert rc == 0 and err == ""
    assert "8 cells x 2 seeds [0, 1] = 16 runs in runs/small/<cell>-s<seed>" in out
    assert re.search(r"^c003\s+600,746  optim.lr=0.001 optim.lookahead=false optim.name=sgd optim.weight_decay=0.0005$",
                     out, re.M)
    line = next(x.strip() for x in out.splitlines() if x.strip().startswith("sbatch "))
    assert line == (f"sbatch --job-name=small --array=0-15%8 --output=runs/small/slurm/%A_%a.out "
                    f"--export=ALL,CIFAR_DIST_ROOT={REPO} {REPO}/slurm/sweep.sh {spec}")
    record = json.loads((tmp_path / "runs" / "small" / "sweep.json").read_text())
    assert record["name"] == "small" and record["spec"] == str(spec) and record["preset"] == "smoke"
    assert record["fixed"] == {"data.dir": "data", "run.epochs": 1}
    assert record["seeds"] == [0, 1]
    assert record["cells"][5] == {"cell": "c005", "index": 5, "params": 600_746, "preset": "smoke", "epochs": 1,
                                  "overrides": {"optim.lr": 0.002, "optim.lookahead": True, "optim.name": "sgd",
                                                "optim.weight_decay": 0.0005}}
    assert record["runs"][3] == {"index": 3, "run": "c001-s1", "cell": "c001", "seed": 1}
    assert (tmp_path / "runs" / "small" / "slurm").is_dir()  # the --output directory must exist for sbatch
    assert not list((tmp_path / "runs" / "small").glob(".*tmp"))


def test_submit_dry_run_leaves_out_finished_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, SMALL)
    for run in ("c000-s0", "c000-s1", "c001-s0", "c004-s1"):
        (tmp_path / "runs" / "small" / run).mkdir(parents=True)
        (tmp_path / "runs" / "small" / run / "result.json").write_text("{}")
    rc = sweep_main(["submit", str(spec), "--dry-run", "--parallel", "3", "--", "--partition=gpu"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "16 runs; skipping 4 finished; submitting 12" in out
    assert out.strip().splitlines()[-1] == (
        f"sbatch --job-name=small --array=3-8,10-15%3 --output=runs/small/slurm/%A_%a.out "
        f"--export=ALL,CIFAR_DIST_ROOT={REPO} --partition=gpu {REPO}/slurm/sweep.sh {spec}")


def test_submit_leaves_out_runs_already_in_squeue(tmp_path, capsys, monkeypatch):
    """squeue (here a stand-in script printing `jobid|state|name`) lists tasks 0 and 5 of this sweep."""
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, SMALL)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "squeue"
    fake.write_text("#!/bin/sh\nprintf '12_0|RUNNING|small\\n12_5|PENDING|small\\n13_1|RUNNING|other\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert squeue_tasks("small") == {"by_index": {0: ("12_0", "RUNNING"), 5: ("12_5", "PENDING")},
                                     "by_job": {"12_0": "RUNNING", "12_5": "PENDING", "13_1": "RUNNING"}}
    assert sweep_main(["submit", str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "16 runs; skipping 0 finished and 2 already queued; submitting 14" in out
    assert "--array=1-4,6-15%8 " in out.splitlines()[-1]


def test_a_changed_spec_may_not_give_a_started_run_another_config(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, SMALL)
    assert plan(capsys, spec)[0] == 0
    (tmp_path / "runs" / "small" / "c001-s0").mkdir()  # c001 has started
    write_spec(tmp_path, SMALL.replace("seeds: 2", "seeds: 3"))  # more seeds: every cell keeps its meaning
    assert plan(capsys, spec)[0] == 0
    write_spec(tmp_path, SMALL.replace("[adam, sgd]", "[adam, adamw]"))  # c001 would become adamw
    rc, out, err = plan(capsys, spec)
    assert rc == 2 and out == ""
    assert err == (f"error: {spec}: c001: expected the overrides c001-s0 started with (optim.lr=0.001 "
                   f"optim.lookahead=true optim.name=sgd optim.weight_decay=0.0005; or a new sweep name), found "
                   f"'optim.lr=0.001 optim.lookahead=true optim.name=adamw optim.weight_decay=0.0005'\n")
    record = json.loads((tmp_path / "runs" / "small" / "sweep.json").read_text())
    assert record["cells"][1]["overrides"]["optim.name"] == "sgd"  # left as it was


def test_array_ranges():
    assert array_ranges([0]) == "0"
    assert array_ranges([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8"
    assert array_ranges(list(range(216))) == "0-215"


def test_flag_values():
    assert [flag_value(v) for v in (True, False, None, [3, 3, 3], 1e-6, 0.1, 5, "adam")] == [
        "true", "false", "none", "[3,3,3]", "1e-06", "0.1", "5", "adam"]


def test_resolve_prints_flags_and_shell_assignments(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, SMALL)
    assert sweep_main(["resolve", str(spec), "9"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == ("--preset=smoke --data.dir=data --run.epochs=1 --optim.lr=0.002 --optim.lookahead=true "
                           "--optim.name=adam --optim.weight_decay=0.0 --run.out_dir=runs/small --run.name=c004-s1 "
                           "--run.seed=1 --resume=auto")
    assert (tmp_path / "runs" / "small" / "sweep.json").is_file()  # the first task writes it if plan did not
    assert sweep_main(["resolve", str(spec), "9", "--shell"]) == 0
    shell = capsys.readouterr().out
    script = shell + 'printf "%s|" "$run_name" "$run_dir" "$cell" "$seed" "$finished" "${#train_args[@]}" "${train_args[9]}"'
    got = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    assert got == "c004-s1|runs/small/c004-s1|c004|1|0|11|--run.seed=1|"
    assert sweep_main(["resolve", str(spec), "16"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {spec}: array index: expected 0..15, found 16"


def test_help_explains_the_commands(capsys):
    assert sweep_main(["--help"]) == 0
    out = capsys.readouterr().out
    for word in ("plan", "submit", "status", "run", "resolve", "array index = cell position", "max_params",
                 "loguniform", "sweep.json"):
        assert word in out
    from cifar_dist.cli import main as cli_main

    assert cli_main(["sweep", "plan", "--help"]) == 0
    assert "print the numbered cells" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ bad specs

BASE = "name: bad\npreset: smoke\n"
BAD_SPECS = [
    ("unknown key", BASE + "grd:\n  optim.lr: [0.1]\n",
     "grd: expected a known key (name, preset, out_dir, fixed, grid, zip, random, seeds, constraints, parallel, sbatch, "
     "search), found 'grd'"),
    ("empty axis", BASE + "grid:\n  optim.lr: []\n", "grid.optim.lr: expected a non-empty list of values, found []"),
    ("unknown distribution", BASE + "random:\n  samples: 2\n  params:\n    optim.lr: {gaussian: [0, 1]}\n",
     "random.params.optim.lr: expected one of {choice: [...], uniform: [...], loguniform: [...], randint: [...]}, "
     "found {'gaussian': [0, 1]}"),
    ("uniform bounds reversed", BASE + "random:\n  samples: 2\n  params:\n    optim.lr: {uniform: [0.5, 0.1]}\n",
     "random.params.optim.lr.uniform: expected [low, high] numbers with low < high, found [0.5, 0.1]"),
    ("loguniform from zero", BASE + "random:\n  samples: 2\n  params:\n    optim.lr: {loguniform: [0, 0.1]}\n",
     "random.params.optim.lr.loguniform: expected [low, high] with 0 < low < high, found [0, 0.1]"),
    ("randint of floats", BASE + "random:\n  samples: 2\n  params:\n    model.c1: {randint: [1.5, 3]}\n",
     "random.params.model.c1.randint: expected [low, high] integers with low <= high, found [1.5, 3]"),
    ("no samples", BASE + "random:\n  params:\n    optim.lr: {uniform: [0.1, 0.2]}\n",
     "random.samples: expected a positive integer, found None"),
    ("budget excludes every cell", BASE + "grid:\n  optim.lr: [0.1, 0.2]\nconstraints:\n  max_params: 1000\n",
     "constraints.max_params: expected a budget that keeps at least one of the 2 cells, found 1000"),
    ("unknown override key", BASE + "grid:\n  optim.lrr: [0.1]\n", "grid.optim.lrr: unknown key; optim has name, lr,"),
    ("unknown fixed key", BASE + "fixed:\n  run:\n    epochz: 3\n", "fixed.run.epochz: unknown key; run has name,"),
    ("unknown section", BASE + "zip:\n  optm.lr: [0.1]\n  optim.name: [sgd]\n",
     "zip.optm.lr: unknown section 'optm'; expected one of data, aug, model, optim, sched, loss, run"),
    ("wrong value type", BASE + "grid:\n  run.epochs: [3, three]\n", "grid.run.epochs: expected an integer, found 'three'"),
    ("value outside the choices", BASE + "grid:\n  optim.name: [sgd, lion]\n",
     "grid.optim.name: expected one of sgd, adam, adamw, adamax, muon, found 'lion'"),
    ("unknown preset", "name: bad\npreset: seed999\n", "preset: unknown preset 'seed999'; expected one of"),
    ("model option the model lacks", BASE + "grid:\n  model.c1: [20]\n",
     "candidate 0 (model.c1=20): model option 'c1' is not accepted by simple_cnn"),
    ("zip of unequal lengths", BASE + "zip:\n  optim.name: [sgd, adam]\n  optim.lr: [0.1]\n",
     "zip: expected lists of equal length (they vary together), found {'optim.name': 2, 'optim.lr': 1}"),
    ("key set by the sweep", BASE + "grid:\n  run.seed: [1, 2]\n",
     "grid.run.seed: expected no value (the sweep sets run.out_dir, run.name, run.seed and run.stop_after), found "
     "'run.seed'"),
    ("key set twice", BASE + "fixed:\n  optim.lr: 0.1\ngrid:\n  optim.lr: [0.2]\n",
     "grid.optim.lr: expected a key set once (it is already in fixed.optim.lr), found 'optim.lr'"),
    ("no name", "preset: smoke\n", "name: expected a sweep name of letters, digits, _ . - (it names a directory), found None"),
    ("empty seeds", BASE + "seeds: []\n", "seeds: expected a non-empty list of distinct integers >= 0 (or a count), found []"),
    ("unknown constraint", BASE + "constraints:\n  max_flops: 10\n",
     "constraints.max_flops: expected a known constraint (max_params, min_params), found 'max_flops'"),
    ("not YAML", BASE + "grid: [\n", "not valid YAML"),
]


@pytest.mark.parametrize("text,message", [c[1:] for c in BAD_SPECS], ids=[c[0] for c in BAD_SPECS])
def test_bad_spec_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, text)
    rc, out, err = plan(capsys, spec)
    assert rc == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: {spec}: "), err
    assert message in err
    assert not (tmp_path / "runs").exists()


def test_missing_spec_file(tmp_path, capsys):
    rc, _, err = plan(capsys, tmp_path / "nope.yaml")
    assert rc == 2 and err == f"error: {tmp_path / 'nope.yaml'}: file not found\n"


def test_run_is_local_and_refuses_local_false(tmp_path, capsys):
    assert sweep_main(["run", str(write_spec(tmp_path, SMALL)), "--local=false"]) == 2
    err = capsys.readouterr().err
    assert "`sweep run` trains on this machine; on a SLURM cluster use `cifar-dist sweep submit GRID`" in err
    assert sweep_main(["local", str(write_spec(tmp_path, SMALL))]) == 2
    assert "found 'local' (did you mean run?" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ shipped grids

# Cells per shipped grid, from the grid text: seed001 3 batches x 6 lrs x 2 lookahead x 2 optimizers;
# seed004 2^5 on/off; the budget grid one cell per seed preset (000-004).
SHIPPED_CELLS = {"seed001_grid": 72, "seed004_ablation": 32, "seed_budget": 5}
# Parameters from SEED_SYSTEMS.md ([verified] there), written by hand.
SEED_PARAMS = {"seed000_soheilnet": 387_712, "seed001_resnet18_5m": 4_903_242, "seed002_tpsnet": 4_959_770,
               "seed003_simple_cnn": 600_746, "seed004_dsresnet_200k": 150_690}


@pytest.mark.parametrize("grid", GRIDS, ids=[g.stem for g in GRIDS])
def test_shipped_grid_plans(grid, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = plan(capsys, grid)
    assert rc == 0, err
    record = json.loads((tmp_path / "runs" / grid.stem / "sweep.json").read_text())
    assert record["name"] == grid.stem
    cells = record["cells"]
    assert f"{len(cells)} cells x {len(record['seeds'])} seeds" in out
    assert "sbatch --job-name=" in out
    if grid.stem in SHIPPED_CELLS:
        assert len(cells) == SHIPPED_CELLS[grid.stem]
    if grid.stem == "seed001_grid":
        assert {c["params"] for c in cells} == {SEED_PARAMS["seed001_resnet18_5m"]}
        assert {(c["overrides"]["run.global_batch_size"], c["overrides"]["optim.lr"]) for c in cells} == {
            (b, lr) for b in (128, 256, 512) for lr in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)}
    if grid.stem == "seed_budget":
        assert {c["overrides"]["preset"]: c["params"] for c in cells} == SEED_PARAMS
        assert {c["epochs"] for c in cells} == {30}
    if grid.stem == "seed004_ablation":
        assert cells[0]["overrides"] == {"loss.mixup_prob": 0.3, "loss.cutmix_prob": 0.3, "loss.ricap_prob": 0.2,
                                         "run.ema": True, "loss.label_smoothing": 0.1}
        assert cells[31]["overrides"] == {"loss.mixup_prob": 0.0, "loss.cutmix_prob": 0.0, "loss.ricap_prob": 0.0,
                                          "run.ema": False, "loss.label_smoothing": 0.0}
    if grid.stem == "seed002_random":
        assert 0 < len(cells) and len(cells) + len(record["dropped"]) == 64
        assert all(c["params"] <= 5_000_000 for c in cells)
        assert all("outside max_params 5,000,000" in line for line in record["dropped"])
        assert {tuple(c["overrides"]) for c in cells} == {("model.blocks", "model.c1", "optim.lr", "optim.name")}


def test_shipped_grid_sbatch_commands_match_reference(monkeypatch):
    monkeypatch.chdir(REPO)
    lines = []
    for grid in GRIDS:
        s = load_sweep(grid.relative_to(REPO))
        cmd = sbatch_command(s, [r.index for r in s.runs], s.spec.parallel)
        lines.append(f"{grid.stem}: {shlex.join(cmd)}")
    check_reference("sbatch_shipped_grids.txt", "\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------ generated launch lines


def _script_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "CIFAR_DIST_", "SBATCH_")) and k != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(CIFAR_DIST_PYTHON="python", CIFAR_DIST_ROOT=str(REPO), CIFAR_DIST_DRY_RUN="1", **extra)
    return env


def _normalise(text: str, tmp: Path) -> str:
    return text.replace(str(REPO), "<repo>").replace(str(tmp), "<tmp>").replace(f" on {HOST},", " on <host>,")


@pytest.mark.slow
def test_sweep_sh_launch_lines_match_reference(tmp_path):
    """slurm/sweep.sh (dry run) for each kind of node: CPU, CPU with 2 processes, 1 GPU, 4 GPUs, a finished run."""
    write_spec(tmp_path, SMALL.replace("seeds: 2", "seeds: [0, 1]"))
    finished = tmp_path / "runs" / "small" / "c007-s1"
    finished.mkdir(parents=True)
    (finished / "result.json").write_text("{}")
    cases = [("cpu", "3", {}), ("cpu, CIFAR_DIST_CPU_PROCS=2", "4", {"CIFAR_DIST_CPU_PROCS": "2"}),
             ("1 gpu", "5", {"CIFAR_DIST_GPUS": "1", "SLURM_GPUS_ON_NODE": "1"}),
             ("4 gpus", "6", {"CIFAR_DIST_GPUS": "4", "SLURM_GPUS_ON_NODE": "4"}),
             ("finished run", "15", {})]
    blocks = []
    for title, index, extra in cases:
        env = _script_env(SLURM_JOB_ID="4242", SLURM_ARRAY_JOB_ID="4240", SLURM_ARRAY_TASK_ID=index, **extra)
        out = subprocess.run(["bash", str(REPO / "slurm" / "sweep.sh"), "spec.yaml"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        blocks.append(f"## {title}\n{_normalise(out.stdout, tmp_path)}")
    text = "\n".join(blocks)
    assert "--main_process_port 24242" in text  # one port per job: tasks sharing a node do not collide
    check_reference("sweep_sh_dry_run.txt", text)


@pytest.mark.slow
def test_train_sh_srun_lines_match_reference(tmp_path):
    """slurm/train.sh (dry run): 2 nodes x 8 GPUs, and 1 CPU node with 2 processes."""
    conf = tmp_path / "slurm.conf"  # `scontrol show hostnames` only needs a parsable config
    conf.write_text("ClusterName=reference\nSlurmctldHost=localhost\n")
    cases = [("2 nodes x 8 gpus", {"SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08]", "CIFAR_DIST_GPUS": "8",
                                   "SLURM_CPUS_PER_TASK": "32"}),
             ("1 cpu node, 2 processes", {"SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "cpu3",
                                          "CIFAR_DIST_CPU_PROCS": "2", "SLURM_CPUS_PER_TASK": "2"})]
    blocks = []
    for title, extra in cases:
        env = _script_env(SLURM_CONF=str(conf), SLURM_JOB_ID="777", **extra)
        out = subprocess.run(["bash", str(REPO / "slurm" / "train.sh"), "--preset=fast", "--run.name=fast 16"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        blocks.append(f"## {title}\n{_normalise(out.stdout, tmp_path)}")
    text = "\n".join(blocks)
    assert "--machine_rank \"$SLURM_NODEID\"" in text and "--main_process_ip gpu07" in text
    check_reference("train_sh_dry_run.txt", text)


def test_scripts_refuse_missing_arguments(tmp_path):
    env = _script_env()
    env.pop("CIFAR_DIST_DRY_RUN")
    out = subprocess.run(["bash", str(REPO / "slurm" / "sweep.sh"), "spec.yaml"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "no array index" in out.stderr
    out = subprocess.run(["bash", str(REPO / "slurm" / "train.sh")], cwd=tmp_path, env=env, capture_output=True,
                         text=True)
    assert out.returncode == 2 and out.stderr.startswith("usage: sbatch")


# ------------------------------------------------------------------------------------------ status rules


def _status_sweep(tmp_path: Path) -> Sweep:
    spec = write_spec(tmp_path, f"name: st\npreset: smoke\nout_dir: {tmp_path / 'runs'}\n"
                                "fixed:\n  run.epochs: 4\ngrid:\n  optim.lr: [0.1, 0.2, 0.3]\nseeds: 2\n")
    return load_sweep(spec, count=False)


def _task(run: Run, **fields) -> None:
    run.dir.mkdir(parents=True, exist_ok=True)
    (run.dir / TASK_FILE).write_text(json.dumps(fields))


def test_status_states_from_files_and_squeue(tmp_path):
    s = _status_sweep(tmp_path)
    r = s.runs  # 6 runs, indices 0..5
    r[0].dir.mkdir(parents=True)
    (r[0].dir / "result.json").write_text(json.dumps({"epochs": 4, "final": {"test_acc": 91.234}}))
    (r[0].dir / "metrics.jsonl").write_text('{"epoch": 4, "test_acc": 91.0}\n')
    r[1].dir.mkdir(parents=True)
    (r[1].dir / "metrics.jsonl").write_text('{"epoch": 1, "test_acc": 50.5}\n{"epoch": 2, "test_acc": 61.25}\n')
    _task(r[1], state="running", exit=None, job="10_1", host="n1", pid=1)
    _task(r[2], state="failed", exit=4, job="10_2", host="n1", pid=1)
    _task(r[3], state="preempted", exit=3, job="10_3", host="n1", pid=1)
    (r[4].dir.parent / r[4].name / "checkpoints").mkdir(parents=True)
    # r[5]: nothing yet

    without = {row["run"]: (row["state"], row["epoch"], row["metric"]) for row in status_rows(s, None)}
    assert without == {
        "c000-s0": ("done", "4/4", "test_acc=91.23 (final)"),
        "c000-s1": ("running", "2/4", "test_acc=61.25 (epoch 2)"),
        "c001-s0": ("failed", "0/4", ""),
        "c001-s1": ("failed", "0/4", ""),
        "c002-s0": ("running", "0/4", ""),
        "c002-s1": ("pending", "0/4", ""),
    }
    queue = {"by_index": {3: ("10_3", "PENDING"), 5: ("11_5", "RUNNING")},
             "by_job": {"10_1": "RUNNING", "10_3": "PENDING", "11_5": "RUNNING"}}
    with_q = {row["run"]: (row["state"], row["detail"]) for row in status_rows(s, queue)}
    assert with_q == {
        "c000-s0": ("done", ""),
        "c000-s1": ("running", "job 10_1"),
        "c001-s0": ("failed", "exit 4 (job 10_2)"),
        "c001-s1": ("pending", "job 10_3 pending"),  # requeued
        "c002-s0": ("failed", "started, not queued, no result"),
        "c002-s1": ("running", "job 11_5"),
    }
    # a SLURM task that says running but left squeue died without a result
    empty = {"by_index": {}, "by_job": {}}
    assert run_state(r[1], empty) == ("failed", "job 10_1 ended without a result (killed or timed out)")


def test_status_of_local_runs_checks_the_pid(tmp_path):
    s = _status_sweep(tmp_path)
    r = s.runs
    _task(r[0], state="running", exit=None, job="local", host=HOST, pid=os.getpid())
    dead = subprocess.Popen(["true"])
    dead.wait()
    _task(r[1], state="running", exit=None, job="local", host=HOST, pid=dead.pid)
    assert run_state(r[0], None) == ("running", "local")
    assert run_state(r[1], None) == ("failed", "local runner gone before the run finished")


def test_local_runner_records_the_trainers_status_not_the_launchers(tmp_path, monkeypatch):
    """A multi-process launcher exits 1 whatever its trainer's status: the local runner records the status.json
    the trainer wrote during this launch (3, stopped), and the launcher's own code when status.json is stale."""
    from cifar_dist.sweep.local import LocalRunner

    s = _status_sweep(tmp_path)
    runner = LocalRunner(s, procs=2)
    monkeypatch.setattr(runner, "command", lambda run: [sys.executable, "-c", "import sys; sys.exit(1)"])
    old = s.runs[1]
    old.dir.mkdir(parents=True)
    (old.dir / "status.json").write_text(json.dumps({"exit": 3, "state": "stopped", "time": 1000}) + "\n")
    runner.stop = [signal.SIGTERM]  # as after a Ctrl-C
    for run in s.runs[:2]:
        runner.start(run)
    (s.runs[0].dir / "status.json").write_text(json.dumps({"exit": 3, "state": "stopped", "time": int(time.time())}))
    while runner.active:
        time.sleep(0.05)
        runner.reap()
    tasks = [json.loads((r.dir / TASK_FILE).read_text()) for r in s.runs[:2]]
    assert [(t["state"], t["exit"]) for t in tasks] == [("preempted", 3), ("preempted", 1)]


def test_status_shows_the_metric_the_report_ranks_by(tmp_path):
    s = _status_sweep(tmp_path)
    r = s.runs
    r[0].dir.mkdir(parents=True)
    (r[0].dir / "result.json").write_text(json.dumps({"epochs": 4, "final": {"test_acc": 80.0},
                                                      "best": {"epoch": 3, "val_acc": 82.5, "test_acc": 81.0}}))
    r[1].dir.mkdir(parents=True)
    (r[1].dir / "metrics.jsonl").write_text('{"epoch": 1, "test_acc": 50.5, "val_acc": 52.25}\n')
    rows = {row["run"]: row["metric"] for row in status_rows(s, None)}
    assert rows["c000-s0"] == "best_val_acc=82.50 (epoch 3)"
    assert rows["c000-s1"] == "val_acc=52.25 (epoch 1)"


def test_status_command_output(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))  # squeue unavailable
    s = _status_sweep(tmp_path)
    s.runs[0].dir.mkdir(parents=True)
    (s.runs[0].dir / "result.json").write_text(json.dumps({"epochs": 4, "final": {"test_acc": 88.0}}))
    assert sweep_main(["status", str(s.spec.path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("sweep st: 6 runs: 1 done, 0 running, 5 pending, 0 failed "
                      "(squeue not available: running = started without a result)")
    assert out[2].split() == ["c000-s0", "0", "done", "4/4", "test_acc=88.00", "(final)"]
    assert sweep_main(["status", str(s.spec.path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["squeue"] is False and [row["state"] for row in data["runs"]] == ["done"] + ["pending"] * 5


# ------------------------------------------------------------------------------------------ local runner


def _epochs(run_dir: Path) -> list[tuple[int, int]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(row["epoch"], row["step"]) for row in rows]


@pytest.mark.slow
def test_local_run_parallel_stop_resume_and_skip(tmp_path, tiny_data):
    """`sweep run --local --parallel 2`: SIGINT stops both runs with a checkpoint (exit 3), a second
    invocation resumes them to the end with every epoch exactly once, a third trains nothing."""
    data_dir, name = tiny_data
    out_dir = tmp_path / "runs"
    spec = write_spec(tmp_path, f"""\
name: loc
preset: smoke
out_dir: {out_dir}
fixed:
  data.dir: {data_dir}
  data.name: {name}
  data.val_size: 100
  run.global_batch_size: 20
  run.progress: false
grid:
  run.epochs: [3, 1]
""")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "cifar_dist", "sweep", "run", str(spec), "--parallel", "2"]  # local by default
    runs = [out_dir / "loc" / "c000-s0", out_dir / "loc" / "c001-s0"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (runs[0] / "metrics.jsonl").is_file():  # epoch 1 of c000 is done; two remain
            assert proc.poll() is None and time.monotonic() < deadline, "no epoch finished"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        first, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, first
    assert "got SIGINT: stopping the runs" in first
    states = {json.loads((r / TASK_FILE).read_text())["state"] for r in runs}
    assert states <= {"preempted", "done"} and "preempted" in states
    assert not (runs[0] / "result.json").exists()

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    # 300 training images / batch 20 = 15 steps per epoch; no epoch lost or repeated across the stop
    assert _epochs(runs[0]) == [(1, 15), (2, 30), (3, 45)]
    assert _epochs(runs[1]) == [(1, 15)]
    for r in runs:  # each run's done line gives its accuracy
        res = json.loads((r / "result.json").read_text())
        assert (f"done  {r.name}: test acc {res['final']['test_acc']:.2f}%, best val acc {res['best']['val_acc']:.2f}% "
                f"(epoch {res['best']['epoch']})") in second.stdout + first, second.stdout
    log = (out_dir / "loc" / "logs" / "c000-s0.out").read_text()
    stop = re.search(r"stopped by signal at epoch ([23]) step (\d+)", log)
    assert stop and f"resumed at epoch {stop.group(1)} step {stop.group(2)}" in log, log
    record = json.loads((out_dir / "loc" / "sweep.json").read_text())
    assert [c["overrides"] for c in record["cells"]] == [{"run.epochs": 3}, {"run.epochs": 1}]

    mtimes = [(r / "result.json").stat().st_mtime_ns for r in runs]
    third = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0
    assert "skip c000-s0: finished" in third.stdout and "skip c001-s0: finished" in third.stdout
    assert "start " not in third.stdout
    assert [(r / "result.json").stat().st_mtime_ns for r in runs] == mtimes

    status = subprocess.run([sys.executable, "-m", "cifar_dist", "sweep", "status", str(spec), "--json"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert [row["state"] for row in json.loads(status.stdout)["runs"]] == ["done", "done"]
