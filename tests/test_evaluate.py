"""`cifar-dist evaluate` and `cifar-dist predict` on a real tiny run (trained once for the module)."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import read_json
from tests.test_train import run, train_cmd


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> Path:
    """One finished 1-epoch run with a validation split (so it keeps best weights) and flip TTA."""
    out = tmp_path_factory.mktemp("evaluate")
    p = run(train_cmd(tiny_data, out, "tiny", "--run.tta=flip", "--run.global_batch_size=50"))
    assert p.returncode == 0, p.stderr[-2000:]
    return out / "tiny"


@pytest.fixture
def cli(capsys):
    """`cifar-dist ARGS...` in this process (torch imported once): (status, stdout, stderr)."""
    from cifar_dist.cli import main

    def call(*args) -> subprocess.CompletedProcess:
        capsys.readouterr()
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, rc, out, err)

    return call


def accuracy_line(stdout: str, prefix: str) -> float:
    line = next(ln for ln in stdout.splitlines() if ln.startswith(prefix))
    return float(line[len(prefix):].split("%")[0])


@pytest.mark.parametrize("weights,part", [("best", "best"), ("last", "final")])
@pytest.mark.slow
def test_evaluate_prints_the_accuracy_the_run_recorded(cli, trained, weights, part):
    result = read_json(trained / "result.json")[part]
    p = cli("evaluate", trained, f"--weights={weights}")
    assert p.returncode == 0, p.stderr
    assert accuracy_line(p.stdout, "test accuracy ") == pytest.approx(round(result["test_acc"], 2), abs=1e-9)
    assert accuracy_line(p.stdout, "test accuracy with tta flip: ") == pytest.approx(
        round(result["test_acc_tta"], 2), abs=1e-9)
    assert f"{weights} weights (epoch 1" in p.stdout
    # per class: one line per class, the counts add up to the overall accuracy
    rows = p.stdout.split("per class:\n")[1].splitlines()
    assert len(rows) == 10
    counts = [tuple(map(int, r.rsplit("(", 1)[1].rstrip(")").split("/"))) for r in rows]
    assert sum(t for _, t in counts) == 200
    assert 100 * sum(c for c, _ in counts) / 200 == pytest.approx(result["test_acc"], abs=1e-9)

    j = json.loads(cli("evaluate", trained, f"--weights={weights}", "--json=true").stdout)
    assert j["acc"] == pytest.approx(result["test_acc"], abs=1e-9)
    assert j["tta_acc"] == pytest.approx(result["test_acc_tta"], abs=1e-9)
    if part == "final":
        assert j["loss"] == pytest.approx(result["test_loss"], rel=1e-6)


def test_evaluate_options_tta_off_and_fewer_images(cli, trained):
    p = cli("evaluate", trained, "--tta=none", "--limit_test=50")
    assert p.returncode == 0, p.stderr
    assert "tta" not in p.stdout
    assert "; 50 test images of tiny" in p.stdout
    counts = [r.rsplit("(", 1)[1].rstrip(")") for r in p.stdout.split("per class:\n")[1].splitlines()]
    assert all(c.endswith("/5") for c in counts)  # class-balanced, as the run's draws are


def test_predict_on_test_images_agrees_with_evaluate(cli, trained, tiny_data, tmp_path):
    from cifar_dist.data import read_images

    data_dir, name = tiny_data
    x, y = read_images(data_dir / f"{name}_test.beton")
    paths = []
    for i, image in enumerate(x):
        ext = "png" if i % 2 else "bmp"  # lossless: the pixels the evaluation sees
        paths.append(tmp_path / f"{i:03d}_{y[i]}.{ext}")
        Image.fromarray(image).save(paths[-1])
    p = cli("predict", trained, *paths, "--top=2")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == len(paths)
    top1 = []
    for path, line in zip(paths, lines):
        head, classes = line.split(": ", 1)
        assert head == str(path)
        (c1, q1), (c2, q2) = [(c, float(q.rstrip("%"))) for c, q in (part.rsplit(" ", 1) for part in classes.split(", "))]
        assert q1 >= q2 and c1 != c2
        top1.append(int(c1.removeprefix("class")))
    acc = 100 * sum(int(t == label) for t, label in zip(top1, y)) / len(y)
    j = json.loads(cli("evaluate", trained, "--json=true").stdout)
    assert acc == pytest.approx(j["acc"], abs=1e-9)
    per_class = {c: (k, n) for c, k, n in j["per_class"]}
    for c in range(10):
        hits = sum(int(t == c) for t, label in zip(top1, y) if label == c)
        assert per_class[f"class{c}"] == (hits, int((y == c).sum()))


def test_predict_resizes_other_sizes_and_reads_jpeg(cli, trained, tmp_path):
    img = tmp_path / "big.jpg"
    Image.new("RGB", (96, 64), (200, 30, 30)).save(img)
    p = cli("predict", trained, img, "--top=3", "--json=true")
    assert p.returncode == 0, p.stderr
    row = json.loads(p.stdout)
    assert row["resized"] is True and len(row["top"]) == 3
    assert sum(q for _, q in row["top"]) <= 1.0 + 1e-6


class Boom:
    """Unpickling this would run code (create `target`): the loader must refuse the file first."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


@pytest.mark.parametrize("damage", ["no_dir", "no_config", "truncated_best", "pickled_best", "no_weights",
                                    "wrong_model", "bad_image"])
def test_damaged_run_is_one_line_exit_2(cli, trained, tmp_path, damage):
    run_dir = tmp_path / "copy"
    shutil.copytree(trained, run_dir, ignore=shutil.ignore_patterns(".lock"))
    best = run_dir / "checkpoints" / "best" / "model.pt"
    expect = str(run_dir)
    cmd = ["evaluate", run_dir]
    if damage == "no_dir":
        run_dir, expect, cmd = tmp_path / "nothing", "not a run directory", ["evaluate", tmp_path / "nothing"]
    elif damage == "no_config":
        (run_dir / "config.yaml").unlink()
        expect = f"{run_dir / 'config.yaml'}: missing"
    elif damage == "truncated_best":
        best.write_bytes(best.read_bytes()[:200])
        expect = f"{best}: cannot load"
    elif damage == "pickled_best":
        best.write_bytes(pickle.dumps({"model": Boom(tmp_path / "PWNED")}))
        expect = f"{best}: cannot load (refused"
    elif damage == "no_weights":
        shutil.rmtree(run_dir / "checkpoints")
        expect = "no weights"
    elif damage == "wrong_model":
        cfg = (run_dir / "config.yaml").read_text().replace("name: simple_cnn", "name: ds_resnet_200k")
        (run_dir / "config.yaml").write_text(cfg)
        expect = "do not fit the model"
    elif damage == "bad_image":
        (tmp_path / "x.png").write_text("not an image")
        cmd, expect = ["predict", run_dir, tmp_path / "x.png"], f"{tmp_path / 'x.png'}: not an image"
    p = cli(*cmd)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("error: "), p.stderr
    assert expect in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    assert not (tmp_path / "PWNED").exists()
