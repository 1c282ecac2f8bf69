"""`cifar-dist report`: tables, CSV and plots of a real small sweep, checked against the runs' own files.

The sweep (2 cells x 2 seeds of the smoke preset on the tiny .beton data, 2 epochs, EMA and flip TTA on,
a validation split) is trained once per session by `real_sweep_dir`; tests that change runs work on
copies. Expected values are recomputed here from metrics.jsonl and result.json, not taken from the
report module.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from cifar_dist import report
from cifar_dist.cli.report import main as report_main
from tests.helpers import REPO, read_json

SEEDS = (0, 1)
CELLS = {"c000": {"optim.lr": 0.001}, "c001": {"optim.lr": 0.003}}  # the spec's grid, in expansion order
# Every step logs train/loss (the TensorBoard tests read it); EMA and TTA give their columns values.
FIXED = {"run.epochs": 2, "data.val_size": 100, "run.ema": True, "run.tta": "flip", "run.log_every_steps": 1,
         "run.progress": False}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

_BUILT: dict[str, Path] = {}


def real_sweep_dir(tmp_path_factory, tiny_data) -> Path:
    """Run a 2-cell x 2-seed grid with the real sweep tool, once per session; returns runs/lr.

    `cifar-dist sweep run --local --parallel 2` trains each run with `python -m cifar_dist.train` and
    writes sweep.json, so the report is tested on the files the sweep tool really produces.
    """
    if "sweep" in _BUILT:
        return _BUILT["sweep"]
    data_dir, data_name = tiny_data
    root = tmp_path_factory.mktemp("sweeps")
    spec = {"name": "lr", "preset": "smoke", "out_dir": str(root / "runs"),
            "fixed": {"data.dir": str(data_dir), "data.name": data_name, **FIXED},
            "grid": {"optim.lr": [ov["optim.lr"] for ov in CELLS.values()]}, "seeds": list(SEEDS)}
    (root / "lr.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "cifar_dist", "sweep", "run", str(root / "lr.yaml"), "--local",
                           "--parallel", "2"], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    sweep = root / "runs" / "lr"
    logs = "".join(p.read_text()[-2000:] for p in sorted((sweep / "logs").glob("*.out")))
    assert proc.returncode == 0, f"sweep run failed:\n{proc.stdout}{proc.stderr}\n{logs}"
    record = read_json(sweep / "sweep.json")
    assert {c["cell"]: c["overrides"] for c in record["cells"]} == CELLS and record["seeds"] == list(SEEDS)
    _BUILT["sweep"] = sweep
    return sweep


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory, tiny_data) -> Path:
    return real_sweep_dir(tmp_path_factory, tiny_data)


def copy_sweep(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "report*", "results.csv"))
    return dst


# ------------------------------------------------------------------------------ expected, from the files


def run_values(run_dir: Path) -> dict[str, float | None]:
    """A run's numbers read straight from its files (the contract of the report's columns)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    res_path = run_dir / "result.json"
    if res_path.is_file():
        res = read_json(res_path)
        return {"best_val_acc": res["best"]["val_acc"], "best_test_acc": res["best"]["test_acc"],
                "final_val_acc": rows[-1]["val_acc"], "final_test_acc": res["final"]["test_acc"],
                "final_test_loss": res["final"]["test_loss"], "final_test_acc_tta": res["final"]["test_acc_tta"],
                "best_test_acc_tta": res["best"]["test_acc_tta"], "ema_test_acc": res["final"]["ema_test_acc"],
                "ema_val_acc": rows[-1]["ema_val_acc"], "epochs": res["epochs"], "images_per_s": res["images_per_s"],
                "wall_s": res["wall_s"]}
    best = max(rows, key=lambda r: r["val_acc"])
    return {"best_val_acc": best["val_acc"], "best_test_acc": best["test_acc"], "final_val_acc": rows[-1]["val_acc"],
            "final_test_acc": rows[-1]["test_acc"], "final_test_loss": rows[-1]["test_loss"],
            "final_test_acc_tta": None, "epochs": rows[-1]["epoch"], "wall_s": None}


def expected_stats(run_dirs: list[Path]) -> dict[str, tuple[float | None, float | None, int]]:
    per_run = [run_values(d) for d in run_dirs]
    out = {}
    for key in per_run[0]:
        v = [r[key] for r in per_run if r.get(key) is not None]
        out[key] = (statistics.fmean(v) if v else None, statistics.stdev(v) if len(v) > 1 else None, len(v))
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def assert_close(text: str, value: float | None):
    if value is None:
        assert text == ""
    else:
        assert float(text) == pytest.approx(value, rel=1e-9, abs=1e-9)


# --------------------------------------------------------------------------------------- sweep report


@pytest.mark.slow
def test_report_matches_the_runs_files(real_sweep, tmp_path, capsys):
    out = tmp_path / "out"
    assert report_main([str(real_sweep), f"--out={out}"]) == 0
    assert "4 runs in 2 cells" in capsys.readouterr().out
    rows = read_csv(out / "results.csv")
    assert [r["cell"] for r in rows] == sorted(CELLS, key=lambda c: (
        -expected_stats([real_sweep / f"{c}-s{s}" for s in SEEDS])["best_val_acc"][0], c))
    for row in rows:
        cell = row["cell"]
        assert float(row["optim.lr"]) == CELLS[cell]["optim.lr"]
        assert int(row["params"]) == read_json(real_sweep / f"{cell}-s0" / "result.json")["params"]
        assert (row["status"], row["n_runs"], row["n_finished"], row["partial_runs"]) == ("finished", "2", "2", "")
        assert row["preset"] == "smoke" and row["reported_test_acc"] == ""  # smoke has no seed figure
        for key, (mean, std, n) in expected_stats([real_sweep / f"{cell}-s{s}" for s in SEEDS]).items():
            assert_close(row[f"{key}_mean"], mean)
            assert_close(row[f"{key}_std"], std)
            assert int(row[f"{key}_n"]) == n == 2, key

    md = (out / "report.md").read_text()
    for cell in CELLS:
        mean, std, _ = expected_stats([real_sweep / f"{cell}-s{s}" for s in SEEDS])["final_test_acc"]
        assert f"{mean:,.2f} ± {std:,.2f}" in md
    assert "| cell | optim.lr | params | n | best val acc (%)" in md
    assert "final TTA test acc (%)" in md and "EMA test acc (%)" in md  # TTA and EMA were on
    assert "Sorted by best val acc (%), highest first" in md
    assert f"tensorboard --logdir {real_sweep}" in md
    # both cells have one parameter count: no accuracy-against-size plot (one x value tells nothing)
    assert not (out / report.PLOTS_DIR / "final_acc_vs_params.png").exists()
    for name in ("test_acc_by_optim.lr.png", "val_acc_by_optim.lr.png", "loss.png"):
        assert f"]({report.PLOTS_DIR}/{name})" in md
        data = (out / report.PLOTS_DIR / name).read_bytes()
        assert data[:8] == PNG_MAGIC
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            assert im.format == "PNG" and im.size == (700, 450)
    assert not (real_sweep / "report.md").exists()  # --out leaves the sweep alone


@pytest.mark.slow
def test_metric_flag_sorts_and_default_output_goes_into_the_sweep(real_sweep, tmp_path):
    sweep = copy_sweep(real_sweep, tmp_path / "lr")
    assert report_main([str(sweep), "--metric=final_test_loss"]) == 0
    rows = read_csv(sweep / "results.csv")
    losses = {c: expected_stats([sweep / f"{c}-s{s}" for s in SEEDS])["final_test_loss"][0] for c in CELLS}
    assert [r["cell"] for r in rows] == sorted(CELLS, key=lambda c: (losses[c], c))  # lower loss first
    assert "Sorted by final test loss, lowest first" in (sweep / "report.md").read_text()
    assert sorted(p.name for p in (sweep / report.PLOTS_DIR).iterdir()) == [
        "loss.png", "test_acc_by_optim.lr.png", "val_acc_by_optim.lr.png"]
    # no temporary files left behind (each run directory's .lock is the trainer's and the sweep folder's
    # .local_runner.json names the local runner that held it: both kept on purpose)
    assert not [p for p in sweep.rglob(".*") if p.is_file() and p.name not in (".lock", ".local_runner.json")]


@pytest.mark.slow
def test_partial_runs_are_reported_with_their_last_epoch(real_sweep, tmp_path):
    sweep = copy_sweep(real_sweep, tmp_path / "lr")
    # c001-s1 stopped after epoch 1: c001 keeps its finished seed; c000 has no finished run at all.
    for name in ("c001-s1", "c000-s0", "c000-s1"):
        (sweep / name / "result.json").unlink()
    m = sweep / "c001-s1" / "metrics.jsonl"
    m.write_text(m.read_text().splitlines()[0] + "\n")
    out = tmp_path / "out"
    assert report_main([str(sweep), f"--out={out}", "--metric=final_test_acc"]) == 0
    rows = {r["cell"]: r for r in read_csv(out / "results.csv")}

    c001 = rows["c001"]
    assert (c001["status"], c001["n_runs"], c001["n_finished"], c001["partial_runs"]) == (
        "1/2 finished", "2", "1", "c001-s1@1/2")
    for key, (mean, _std, n) in expected_stats([sweep / "c001-s0"]).items():
        assert_close(c001[f"{key}_mean"], mean)
        assert c001[f"{key}_std"] == "" and int(c001[f"{key}_n"]) == n == 1

    c000 = rows["c000"]  # from metrics.jsonl at the last logged epoch
    assert (c000["status"], c000["n_finished"], c000["partial_runs"]) == ("partial", "0", "c000-s0@2/2 c000-s1@2/2")
    for key, (mean, std, n) in expected_stats([sweep / "c000-s0", sweep / "c000-s1"]).items():
        assert_close(c000[f"{key}_mean"], mean)
        assert_close(c000[f"{key}_std"], std)
        assert int(c000[f"{key}_n"]) == n
    assert c000["final_test_acc_tta_n"] == "0" and c000["wall_s_n"] == "0"

    md = (out / "report.md").read_text()
    assert "1 finished, 3 unfinished" in md
    assert "| c001-s1 | c001 | 1 | partial | 1/2 |" in md
    assert "`c001-s1` at epoch 1 of 2" in md
    assert "1/2 finished; unfinished: c001-s1@1/2" in md


@pytest.mark.slow
def test_runs_missing_from_a_sweep_are_named(real_sweep, tmp_path):
    sweep = copy_sweep(real_sweep, tmp_path / "lr")
    shutil.rmtree(sweep / "c000-s1")
    shutil.rmtree(sweep / "c001-s0")
    shutil.rmtree(sweep / "c001-s1")
    assert report_main([str(sweep)]) == 0
    rows = {r["cell"]: r for r in read_csv(sweep / "results.csv")}
    assert list(rows) == ["c000", "c001"]  # the cell without runs sorts last
    assert (rows["c001"]["status"], rows["c001"]["n_runs"], rows["c001"]["best_val_acc_n"]) == ("no runs", "0", "0")
    assert rows["c000"]["best_val_acc_n"] == "1"
    md = (sweep / "report.md").read_text()
    assert "Runs listed in sweep.json without a directory yet: c000-s1, c001-s0, c001-s1." in md
    assert "| c001 | `0.003` | 600,746 | 0 | — |" in md


@pytest.mark.slow
def test_folder_without_sweep_json_groups_by_name_and_config_differences(real_sweep, tmp_path):
    sweep = copy_sweep(real_sweep, tmp_path / "plain")
    (sweep / "sweep.json").unlink()
    loaded = report.load_results(sweep)
    assert loaded.info == {} and loaded.override_keys == ["optim.lr"] and loaded.varying_keys == ["optim.lr"]
    assert {c.name: (c.overrides, sorted(r.name for r in c.runs)) for c in loaded.cells} == {
        c: (ov, [f"{c}-s{s}" for s in SEEDS]) for c, ov in CELLS.items()}
    out = tmp_path / "out"
    assert report_main([str(sweep), f"--out={out}"]) == 0
    rows = {r["cell"]: r for r in read_csv(out / "results.csv")}
    for cell in CELLS:
        mean, std, n = expected_stats([sweep / f"{cell}-s{s}" for s in SEEDS])["best_val_acc"]
        assert_close(rows[cell]["best_val_acc_mean"], mean)
        assert_close(rows[cell]["best_val_acc_std"], std)


@pytest.mark.slow
def test_single_run_gets_the_same_table_and_curves(real_sweep, tmp_path):
    run = real_sweep / "c001-s1"
    out = tmp_path / "out"
    assert report_main([str(run), f"--out={out}"]) == 0
    (row,) = read_csv(out / "results.csv")
    assert row["cell"] == "c001" and row["n_runs"] == "1"
    for key, (mean, _, n) in expected_stats([run]).items():
        assert_close(row[f"{key}_mean"], mean)
        assert int(row[f"{key}_n"]) == n == 1
    md = (out / "report.md").read_text()
    assert "(run; 1 run in 1 cell" in md
    for name in ("test_acc.png", "val_acc.png", "loss.png"):
        assert (out / report.PLOTS_DIR / name).read_bytes()[:8] == PNG_MAGIC
        assert f"({report.PLOTS_DIR}/{name})" in md


@pytest.mark.slow
def test_seed_preset_shows_the_reported_figure(real_sweep, tmp_path):
    from cifar_dist.presets import REPORTED_ACC

    sweep = copy_sweep(real_sweep, tmp_path / "lr")
    for cfg in sweep.glob("*/config.yaml"):  # relabel the runs as if trained from seed 001's preset
        cfg.write_text(cfg.read_text().replace("preset: smoke", "preset: seed001_resnet18_5m"))
    out = tmp_path / "out"
    assert report_main([str(sweep), f"--out={out}"]) == 0
    assert {r["reported_test_acc"] for r in read_csv(out / "results.csv")} == {repr(REPORTED_ACC["seed001_resnet18_5m"])}
    md = (out / "report.md").read_text()
    assert "seed reported (%)" in md and f"reported {REPORTED_ACC['seed001_resnet18_5m']:.2f} % test accuracy" in md


@pytest.mark.slow
def test_cli_end_to_end(real_sweep, tmp_path):
    """The installed entry point, as a user types it (exit 0, files written; exit 2 on bad input)."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ok = subprocess.run([sys.executable, "-m", "cifar_dist", "report", str(real_sweep), "--out", str(out)],
                        capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert (out / "report.md").is_file() and (out / "results.csv").is_file()
    bad = subprocess.run([sys.executable, "-m", "cifar_dist", "report", str(tmp_path / "nope")],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: {tmp_path / 'nope'}: no such directory"


# --------------------------------------------------------------------------------------------- plots


def _cells(sweep: Path) -> list[report.CellResult]:
    return report.load_results(sweep).cells


@pytest.mark.slow
def test_accuracy_figure_groups_lines_by_the_value_of_a_key(real_sweep):
    cells = _cells(real_sweep)
    fig = report.accuracy_figure(cells, key="optim.lr")
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["optim.lr=0.001", "optim.lr=0.003"]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == (
        "epoch", "test accuracy (%)", "Test accuracy by optim.lr (mean, band ± std over 2 seeds)")
    for line, cell in zip(ax.get_lines(), ("c000", "c001")):
        rows = [[json.loads(x) for x in (real_sweep / f"{cell}-s{s}" / "metrics.jsonl").read_text().splitlines()]
                for s in SEEDS]
        assert list(line.get_xdata()) == [1, 2]
        assert list(line.get_ydata()) == pytest.approx([statistics.fmean(r[e]["test_acc"] for r in rows) for e in (0, 1)])
    assert len(ax.collections) == 2  # one +-std band per cell (two seeds each)

    # Three cells, two values of optim.name: three lines, two legend entries, one colour per value.
    runs = [r for c in cells for r in c.runs]
    grid = [report.CellResult("a", {"optim.name": "adam"}, runs[:2]), report.CellResult("b", {"optim.name": "sgd"}, runs[2:3]),
            report.CellResult("c", {"optim.name": "adam"}, runs[3:])]
    ax = report.accuracy_figure(grid, key="optim.name").axes[0]
    lines = ax.get_lines()
    assert len(lines) == 3
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["optim.name=adam", "optim.name=sgd"]
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()  # adam, adam, sgd


@pytest.mark.slow
def test_accuracy_figure_without_key_has_one_labelled_line_per_cell(real_sweep):
    ax = report.accuracy_figure(_cells(real_sweep), keys=["optim.lr"]).axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["c000: optim.lr=0.001", "c001: optim.lr=0.003"]
    assert len(ax.get_lines()) == 2 and ax.get_title() == "Test accuracy (mean, band ± std over 2 seeds)"


@pytest.mark.slow
def test_params_figure_has_one_point_per_cell(real_sweep):
    cells = _cells(real_sweep)
    ax = report.params_figure(cells, ["optim.lr"]).axes[0]
    assert len(ax.containers) == 2
    # one size (within a decade): a linear axis; sweep_figures leaves this figure out for one parameter count
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_xscale()) == ("parameters", "final test accuracy (%)", "linear")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["c000: optim.lr=0.001", "c001: optim.lr=0.003"]
    for container, cell in zip(ax.containers, ("c000", "c001")):
        x, y = container.lines[0].get_data()
        results = [read_json(real_sweep / f"{cell}-s{s}" / "result.json") for s in SEEDS]
        assert list(x) == [results[0]["params"]]
        assert list(y) == pytest.approx([statistics.fmean(r["final"]["test_acc"] for r in results)])


@pytest.mark.slow
def test_loss_figure_has_train_and_test_lines_per_cell(real_sweep):
    ax = report.loss_figure(_cells(real_sweep)).axes[0]
    lines = ax.get_lines()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["c000", "c001"]  # one entry per cell
    assert [ln.get_linestyle() for ln in lines] == ["-", ":", "--", "-", ":", "--"]  # train, validation, test
    assert ax.get_title() == "Loss per epoch, mean over seeds (train solid, validation dotted, test dashed)"
    assert lines[0].get_color() == lines[2].get_color() != lines[3].get_color()
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("epoch", "loss (cross-entropy)")
    rows = [[json.loads(x) for x in (real_sweep / f"c000-s{s}" / "metrics.jsonl").read_text().splitlines()]
            for s in SEEDS]
    assert list(lines[0].get_ydata()) == pytest.approx([statistics.fmean(r[e]["train_loss"] for r in rows)
                                                        for e in (0, 1)])


@pytest.mark.slow
def test_figures_save_as_decodable_png(real_sweep, tmp_path):
    for name, _title, fig in report.sweep_figures(report.load_results(real_sweep)):
        data = report.figure_png(fig)
        assert data[:8] == PNG_MAGIC, name
        (tmp_path / name).write_bytes(data)
        with Image.open(tmp_path / name) as im:
            im.verify()
        with Image.open(tmp_path / name) as im:
            assert im.convert("RGB").getextrema() != ((255, 255), (255, 255), (255, 255))  # not blank


# ---------------------------------------------------------------------------------------- bad input


def _write_run(run_dir: Path, metrics: str, result: str | None = None) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text(metrics)
    if result is not None:
        (run_dir / "result.json").write_text(result)
    return run_dir


GOOD_ROW = json.dumps({"epoch": 1, "step": 3, "train_loss": 2.0, "test_acc": 40.0, "test_loss": 1.9}) + "\n"


@pytest.mark.parametrize("case", ["missing", "file", "empty", "bad_metrics_json", "bad_metrics_row",
                                  "bad_result_json", "bad_result_shape", "bad_sweep_json", "bad_config"])
def test_bad_input_is_one_line_and_status_2(tmp_path, capsys, case):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    expect = str(sweep)
    if case == "missing":
        sweep = tmp_path / "absent"
        expect = f"{sweep}: no such directory"
    elif case == "file":
        sweep = tmp_path / "a_file"
        sweep.write_text("x")
        expect = f"{sweep}: expected a sweep or run directory, found a file"
    elif case == "empty":
        (sweep / "notes").mkdir()  # a folder without run files is not a run
        expect = f"{sweep}: no run directories"
    elif case == "bad_metrics_json":
        _write_run(sweep / "c000-s0", GOOD_ROW + '{"epoch": 2, "test_acc": \n')
        expect = f"{sweep / 'c000-s0' / 'metrics.jsonl'}:2: expected one JSON object per line"
    elif case == "bad_metrics_row":
        _write_run(sweep / "c000-s0", GOOD_ROW + '{"step": 6}\n')
        expect = f"{sweep / 'c000-s0' / 'metrics.jsonl'}:2: expected an object with an integer \"epoch\""
    elif case == "bad_result_json":
        _write_run(sweep / "c000-s0", GOOD_ROW, "{not json")
        expect = f"{sweep / 'c000-s0' / 'result.json'}: not valid JSON"
    elif case == "bad_result_shape":
        _write_run(sweep / "c000-s0", GOOD_ROW, json.dumps({"final": {"test_acc": "high"}, "best": {}}))
        expect = f"{sweep / 'c000-s0' / 'result.json'}: expected a number at final.test_acc"
    elif case == "bad_sweep_json":
        _write_run(sweep / "c000-s0", GOOD_ROW)
        (sweep / "sweep.json").write_text('{"cells": 3}')
        expect = f"{sweep / 'sweep.json'}: expected an object with a list under \"cells\""
    elif case == "bad_config":
        _write_run(sweep / "c000-s0", GOOD_ROW)
        (sweep / "c000-s0" / "config.yaml").write_text("optim: [1, 2\n")
        expect = f"{sweep / 'c000-s0' / 'config.yaml'}: not valid YAML"
    assert report_main([str(sweep)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith(f"error: {expect}")
    assert not list(tmp_path.rglob("report.md")) and not list(tmp_path.rglob("results.csv"))


@pytest.mark.parametrize("argv, expect", [
    (["--metric=accuracy"], "error: --metric: expected one of best_val_acc, best_test_acc"),
    (["--colour=red"], "error: cifar-dist report: unknown flag --colour"),
    ([], None),
])
def test_bad_flags_are_one_line_and_status_2(tmp_path, capsys, argv, expect):
    run = _write_run(tmp_path / "sweep" / "c000-s0", GOOD_ROW)
    args = [str(run.parent), *argv] if argv else []  # [] = the path is missing
    assert report_main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(expect or "error: cifar-dist report: missing argument PATH")
    assert not (run.parent / "report.md").exists()


def test_a_run_that_has_not_logged_an_epoch_is_partial_not_an_error(tmp_path):
    sweep = tmp_path / "sweep"
    _write_run(sweep / "c000-s0", GOOD_ROW)
    _write_run(sweep / "c000-s1", "")
    assert report_main([str(sweep)]) == 0
    (row,) = read_csv(sweep / "results.csv")
    assert (row["status"], row["partial_runs"], row["final_test_acc_mean"], row["final_test_acc_n"]) == (
        "partial", "c000-s0@1 c000-s1@0", "40.0", "1")


# ------------------------------------------------------------------ an honest report (synthetic runs)


def _synthetic_run(run_dir: Path, config: dict, accs: list[float], params: int = 1000, val: bool = True) -> Path:
    """A finished run directory as the engine writes it, with `accs` as its test accuracy per epoch."""
    rows = [{"epoch": e, "step": 3 * e, "train_loss": 2.0 / e, "test_loss": 2.1 / e, "test_acc": a,
             **({"val_acc": a + 1, "val_loss": 2.05 / e} if val else {})} for e, a in enumerate(accs, 1)]
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    nested: dict = {}
    for key, value in {"run.epochs": len(accs), **config}.items():
        section, name = key.split(".")
        nested.setdefault(section, {})[name] = value
    (run_dir / "config.yaml").write_text(yaml.safe_dump(nested))
    best = max(rows, key=lambda r: r.get("val_acc", 0))
    (run_dir / "result.json").write_text(json.dumps({
        "status": "finished", "epochs": len(accs), "params": params,
        "final": {"test_acc": accs[-1], "test_loss": rows[-1]["test_loss"]},
        "best": {"epoch": best["epoch"], "val_acc": best.get("val_acc"), "test_acc": best["test_acc"]}}))
    return run_dir


def _plots(out: Path) -> list[str]:
    return sorted(p.name for p in (out / report.PLOTS_DIR).iterdir()) if (out / report.PLOTS_DIR).is_dir() else []


def test_keys_that_change_together_get_a_table_not_a_plot_each(tmp_path, capsys):
    """Cells that differ in three keys at once: no `test_acc_by_<key>` plot pretends one key made the
    difference; the report names the keys and draws the cells instead."""
    root = tmp_path / "runs"
    for seed in (0, 1):
        _synthetic_run(root / f"fast-s{seed}", {"model.name": "airbench", "data.name": "cifar10"}, [50, 60 + seed],
                       params=2000)
        _synthetic_run(root / f"slow-s{seed}", {"model.name": "simple_cnn", "data.name": "tiny"}, [30, 40 + seed])
    assert report_main([str(root)]) == 0
    md = (root / "report.md").read_text()
    assert "`data.name`, `model.name` change together" in md
    assert _plots(root) == ["final_acc_vs_params.png", "loss.png", "test_acc.png", "val_acc.png"]


def test_a_key_that_varies_alone_gets_its_plot_and_one_colour_per_cell(tmp_path):
    root = tmp_path / "runs"
    for cell, (lr, bs) in {"c000": (0.1, 128), "c001": (0.2, 128), "c002": (0.1, 256)}.items():
        for seed in (0, 1, 2):
            _synthetic_run(root / f"{cell}-s{seed}", {"optim.lr": lr, "run.global_batch_size": bs},
                           [10 + seed, 20 + lr * 10 + bs / 64], params=1000 + bs)
    sweep = report.load_results(root)
    assert sweep.keys_alone == ["optim.lr", "run.global_batch_size"] and sweep.keys_together == []
    figures = {name: fig for name, _, fig in report.sweep_figures(sweep)}
    assert sorted(figures) == ["final_acc_vs_params.png", "loss.png", "test_acc_by_optim.lr.png",
                               "test_acc_by_run.global_batch_size.png", "val_acc_by_optim.lr.png",
                               "val_acc_by_run.global_batch_size.png"]
    # the band says what it is
    title = figures["test_acc_by_optim.lr.png"].axes[0].get_title()
    assert title == "Test accuracy by optim.lr (mean, band ± std over 3 seeds)"
    assert figures["val_acc_by_optim.lr.png"].axes[0].get_ylabel() == "validation accuracy (%)"
    # one colour per cell in every per-cell figure
    from matplotlib.colors import to_hex

    def colour_of(artist):
        return to_hex(artist.get_color() if hasattr(artist, "get_color") else artist.lines[0].get_color())

    params_ax = figures["final_acc_vs_params.png"].axes[0]
    params_colours = {c.get_label().split(":")[0]: colour_of(c) for c in params_ax.containers}
    loss_colours = {ln.get_label().split(":")[0]: colour_of(ln) for ln in figures["loss.png"].axes[0].get_lines()
                    if not ln.get_label().startswith("_")}
    assert params_colours == loss_colours and len(set(params_colours.values())) == 3


def test_no_plot_without_information_and_integers_as_integers(tmp_path):
    """One epoch per run and one parameter count: every curve would be one point, the size plot one x
    value; the table carries the numbers, and epochs read as integers."""
    root = tmp_path / "runs"
    for cell, lr in {"c000": 0.1, "c001": 0.2}.items():
        for seed in (0, 1):
            _synthetic_run(root / f"{cell}-s{seed}", {"optim.lr": lr}, [40 + seed + 10 * lr], val=False)
    assert report_main([str(root)]) == 0
    assert _plots(root) == []
    md = (root / "report.md").read_text()
    assert "No plots:" in md
    header = next(ln for ln in md.splitlines() if ln.startswith("| cell |"))
    row = next(ln for ln in md.splitlines() if ln.startswith("| c000 |"))
    cols = dict(zip([h.strip() for h in header.split("|")], [v.strip() for v in row.split("|")]))
    assert cols["epochs"] == "1" and cols["best epoch"] == "1"  # not "1.0 ± 0.0"
    (csv_row, _) = read_csv(root / "results.csv")
    assert csv_row["epochs_mean"] == "1" and csv_row["epochs_std"] == "0.0"


def test_nested_sweeps_are_named_in_one_line(tmp_path, capsys):
    root = tmp_path / "runs"
    _synthetic_run(root / "smoke", {"optim.lr": 0.1}, [40, 50])
    _synthetic_run(root / "tiny" / "c000-s0", {"optim.lr": 0.1}, [40, 50])
    (root / "tiny" / "sweep.json").write_text(json.dumps({"cells": [{"cell": "c000", "overrides": {}}],
                                                          "seeds": [0]}))
    assert report_main([str(root)]) == 0
    out = capsys.readouterr().out
    summary = next(ln for ln in out.splitlines() if ln.startswith("report:"))
    assert f"not included: the sweeps in {root / 'tiny'}" in summary
    assert "`tiny/`" in (root / "report.md").read_text()
    # a folder of sweeps only: one line naming them
    assert report_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"error: {tmp_path}: no run directories of its own; it holds the sweeps "
                                        f"runs: report each one, e.g. `cifar-dist report {root}`"]
