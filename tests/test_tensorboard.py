"""TensorBoard sees every run of a sweep: scalars per epoch and per step, and the HParams tab.

Two readers of the event files that `cifar_dist.engine` writes: tensorboard's EventAccumulator, and a
real `tensorboard --logdir` server on a free loopback port queried over HTTP (the routes the web
page uses), stopped in a `finally`. Values are compared with each run's metrics.jsonl/result.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cifar_dist.engine.logs import HPARAMS_FIXED
from tests.helpers import free_port, read_json
from tests.test_report import CELLS, SEEDS, real_sweep_dir

RUNS = [f"{c}-s{s}" for c in CELLS for s in SEEDS]
EPOCH_TAGS = ["epoch/train_loss", "epoch/train_acc", "epoch/lr", "epoch/images_per_s", "epoch/val_acc",
              "epoch/val_loss", "epoch/ema_val_acc", "epoch/test_acc", "epoch/test_loss", "epoch/ema_test_acc",
              "epoch/wall_s", "epoch/best_val_acc"]
# HParams metrics: the last point of each series (the TTA accuracy is the one single value, logged when TTA ran)
FINAL_METRICS = {"epoch/test_acc": ("final", "test_acc"), "test/acc_tta": ("final", "test_acc_tta"),
                 "epoch/best_val_acc": ("best", "val_acc"), "epoch/val_acc": None, "epoch/images_per_s": None,
                 "epoch/wall_s": None}


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory, tiny_data) -> Path:
    return real_sweep_dir(tmp_path_factory, tiny_data)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------ event reader


@pytest.mark.slow
def test_event_files_hold_scalars_and_hparams_of_every_run(real_sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    for run in RUNS:
        run_dir = real_sweep / run
        acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        tags = acc.Tags()["scalars"]
        assert set(EPOCH_TAGS + ["train/loss", "train/lr"]) <= set(tags), run
        assert not [t for t in tags if t.startswith(("hparam/", "model/")) or t == "epoch/step"], tags

        rows = metrics(run_dir)
        for key in ("test_acc", "val_acc", "train_loss", "test_loss"):
            events = acc.Scalars(f"epoch/{key}")
            assert [e.step for e in events] == [r["epoch"] for r in rows]
            assert [e.value for e in events] == pytest.approx([r[key] for r in rows], rel=1e-6)
        # train/loss is logged every optimizer step (run.log_every_steps=1 in the sweep).
        assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, rows[-1]["step"] + 1))

        result = read_json(run_dir / "result.json")
        for tag, where in FINAL_METRICS.items():
            if where is not None:
                assert acc.Scalars(tag)[-1].value == pytest.approx(result[where[0]][where[1]], rel=1e-6)
        assert acc.Scalars("epoch/val_acc")[-1].value == pytest.approx(rows[-1]["val_acc"], rel=1e-6)

        # The HParams plugin data: an experiment and a session with the sweep's varied keys (the cells'
        # override keys, run.seed for several seeds) and the short fixed set, strings as text.
        content = acc.PluginTagToContent("hparams")
        assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(content)
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        hp = start.session_start_info.hparams
        cell, seed = run.rsplit("-s", 1)
        varied = list(CELLS[cell]) + ["run.seed"]
        assert set(hp) == {*varied, *HPARAMS_FIXED, "params"}, sorted(hp)
        assert hp["params"].string_value == str(result["params"])  # an integer as an integer
        for key, value in CELLS[cell].items():  # the cell's override keys, with this cell's values
            assert hp[key].number_value == pytest.approx(value)
        assert hp["run.seed"].string_value == seed
        assert hp["preset"].string_value == "smoke"
        assert hp["model.name"].string_value == "simple_cnn"
        experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
        assert {m.name.tag for m in experiment.metric_infos} == set(FINAL_METRICS)
        assert "optim.lr" in {h.name for h in experiment.hparam_infos}


# ---------------------------------------------------------------------------------- HTTP server


def get_json(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def wait_for(check, timeout: float, what: str, server: subprocess.Popen):
    """Poll `check()` until it returns a truthy value; fail early if the server died."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"tensorboard exited with status {server.returncode} while waiting for {what}")
        try:
            value = check()
            if value:
                return value
        except (urllib.error.URLError, ConnectionError, OSError, ValueError) as e:
            last = e
        time.sleep(0.5)
    pytest.fail(f"tensorboard: no {what} within {timeout:.0f} s (last error: {last!r})")


def scalars(base: str, run: str, tag: str, n: int):
    """A check for `wait_for`: the scalars route's [[wall_time, step, value], ...] once it has n points."""
    url = f"{base}/data/plugin/scalars/scalars?run={run}&tag={urllib.request.quote(tag, safe='')}"

    def check():
        points = get_json(url)
        return points if len(points) >= n else None

    return check


@pytest.mark.slow
def test_tensorboard_server_serves_every_run(real_sweep, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    tb = Path(sys.executable).with_name("tensorboard")
    log = (tmp_path / "tensorboard.log").open("w")
    # load_fast=false: the pure-Python reader (no separate Rust data server), so what is served is
    # exactly what EventAccumulator reads.
    server = subprocess.Popen([str(tb), "--logdir", str(real_sweep), "--host", "127.0.0.1", "--port", str(port),
                               "--load_fast=false", "--reload_interval=1"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: sorted(get_json(f"{base}/data/runs")) == sorted(RUNS), 120, "list of the 4 runs", server)
        for run in RUNS:
            rows = metrics(real_sweep / run)
            points = wait_for(scalars(base, run, "epoch/test_acc", len(rows)), 60, f"epoch/test_acc of {run}", server)
            assert [p[1] for p in points] == [r["epoch"] for r in rows]
            assert [p[2] for p in points] == pytest.approx([r["test_acc"] for r in rows], rel=1e-6)
            steps = rows[-1]["step"]
            loss = wait_for(scalars(base, run, "train/loss", steps), 60, f"train/loss of {run}", server)
            assert [p[1] for p in loss] == list(range(1, steps + 1))

        tags = get_json(f"{base}/data/plugin/scalars/tags")
        assert set(tags) == set(RUNS)
        for run in RUNS:
            assert {"epoch/test_acc", "epoch/val_acc", "train/loss", "test/acc_tta"} <= set(tags[run])

        # The HParams tab: one session group per run, with its config and its final metrics.
        body = {"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                                          "STATUS_RUNNING"],
                "colParams": [], "startIndex": 0, "sliceSize": 100}
        groups = get_json(f"{base}/data/plugin/hparams/session_groups", body)["sessionGroups"]
        assert sorted(g["name"] for g in groups) == sorted(RUNS)
        for g in groups:
            cell = g["name"].rsplit("-s", 1)[0]
            assert g["hparams"]["optim.lr"] == pytest.approx(CELLS[cell]["optim.lr"])
            result = read_json(real_sweep / g["name"] / "result.json")
            values = {m["name"]["tag"]: m["value"] for m in g["metricValues"]}
            assert values["epoch/test_acc"] == pytest.approx(result["final"]["test_acc"], rel=1e-6)
            assert values["epoch/best_val_acc"] == pytest.approx(result["best"]["val_acc"], rel=1e-6)
            assert values["test/acc_tta"] == pytest.approx(result["final"]["test_acc_tta"], rel=1e-6)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()
    assert server.returncode is not None


# ------------------------------------------------------------------- what a user reads, run by run


@pytest.fixture(scope="module")
def two_runs(tiny_data, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """Two 2-epoch tiny runs trained side by side: "val" (a validation split, no TTA) and "tta" (no
    validation split, flip TTA). Returns name -> (run directory, stdout)."""
    from tests.test_train import REPO, train_cmd

    out = tmp_path_factory.mktemp("pages")
    extra = {"val": ["--run.tta=none"], "tta": ["--data.val_size=0", "--run.tta=flip"]}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {name: subprocess.Popen(train_cmd(tiny_data, out, name, "--run.epochs=2", "--run.log_every_steps=1",
                                              *args), cwd=REPO, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, args in extra.items()}
    runs = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-2000:]
        runs[name] = (out / name, stdout)
    return runs


def events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return acc


def hparams_of(acc):
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    return start.session_start_info.hparams, {m.name.tag: m.display_name for m in experiment.metric_infos}


def text_of(acc, tag: str) -> str:
    return acc.Tensors(f"{tag}/text_summary")[-1].tensor_proto.string_val[0].decode()


@pytest.mark.parametrize("name", ["val", "tta"])
@pytest.mark.slow
def test_no_single_point_charts_and_val_loss(two_runs, name):
    run_dir, _ = two_runs[name]
    acc = events(run_dir)
    rows = metrics(run_dir)
    counts = {tag: len(acc.Scalars(tag)) for tag in acc.Tags()["scalars"]}
    singles = {t for t, n in counts.items() if n < 2}
    # the TTA accuracy is computed once, after training: the one single value, only when TTA ran
    assert singles == ({"test/acc_tta"} if name == "tta" else set()), counts
    assert not [t for t in counts if t.startswith(("hparam/", "model/")) or t == "epoch/step"], counts
    if name == "val":
        assert [e.value for e in acc.Scalars("epoch/val_loss")] == pytest.approx([r["val_loss"] for r in rows])
        assert [e.step for e in acc.Scalars("epoch/val_loss")] == [1, 2]
    else:
        assert "epoch/val_loss" not in counts and "epoch/val_acc" not in counts
    wall = [e.value for e in acc.Scalars("epoch/wall_s")]
    assert 0 < wall[0] < wall[1] <= read_json(run_dir / "result.json")["wall_s"]


@pytest.mark.parametrize("name", ["val", "tta"])
def test_hparams_metrics_and_integers(two_runs, name):
    run_dir, _ = two_runs[name]
    result = read_json(run_dir / "result.json")
    acc = events(run_dir)
    hp, metric_titles = hparams_of(acc)
    expected = {"epoch/test_acc", "epoch/images_per_s", "epoch/wall_s"}
    expected |= {"epoch/val_acc", "epoch/best_val_acc"} if name == "val" else {"test/acc_tta"}
    assert set(metric_titles) == expected
    assert all(metric_titles.values()), metric_titles  # each column has a readable title
    if name == "tta":
        assert metric_titles["test/acc_tta"] == "final test acc, tta flip (%)"
        assert acc.Scalars("test/acc_tta")[-1].value == pytest.approx(result["final"]["test_acc_tta"], rel=1e-6)
    else:
        assert acc.Scalars("epoch/best_val_acc")[-1].value == pytest.approx(result["best"]["val_acc"], rel=1e-6)
    # what HParams shows for each metric: the series' last point
    assert acc.Scalars("epoch/test_acc")[-1].value == pytest.approx(result["final"]["test_acc"], rel=1e-6)
    assert acc.Scalars("epoch/images_per_s")[-1].value == pytest.approx(metrics(run_dir)[-1]["images_per_s"])
    # integers as integers (TensorBoard prints every number with four decimals), fractions as numbers
    assert hp["params"].string_value == str(result["params"]) == "600746"
    assert hp["run.epochs"].string_value == "2" and hp["run.global_batch_size"].string_value == "100"
    assert hp["optim.lr"].number_value == pytest.approx(1e-3)


def test_confusion_matrix_has_a_title_and_a_colour_bar(two_runs):
    import io

    from PIL import Image

    from cifar_dist.engine.logs import confusion_figure

    fig = confusion_figure([[3, 1], [0, 4]], ["a", "b"], "final weights (epoch 2): test accuracy 87.50%")
    assert fig.axes[0].get_title() == "final weights (epoch 2): test accuracy 87.50%"
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "test images"  # the colour bar and its unit
    run_dir, _ = two_runs["val"]
    acc = events(run_dir)
    (image,) = acc.Images("test/confusion_matrix")
    assert image.step == 2
    png = Image.open(io.BytesIO(image.encoded_image_string))
    assert png.width > png.height  # the colour bar beside the square matrix
    result = read_json(run_dir / "result.json")
    assert f"| final.test_acc | {result['final']['test_acc']:,.2f} |" in text_of(acc, "run/result")
    assert f"| params | {result['params']} |" in text_of(acc, "run/result")
    assert "tta" not in text_of(acc, "run/result")  # TTA did not run in this one
    tta_dir, _ = two_runs["tta"]
    tta_result = read_json(tta_dir / "result.json")["final"]["test_acc_tta"]
    assert f"| final.test_acc_tta | {tta_result:,.2f} |" in text_of(events(tta_dir), "run/result")


def test_config_and_command_in_the_text_tab(two_runs):
    run_dir, _ = two_runs["val"]
    acc = events(run_dir)
    config = text_of(acc, "run/config")
    assert config == "\n".join("    " + line for line in (run_dir / "config.yaml").read_text().splitlines())
    command = text_of(acc, "run/command")
    assert command.strip() == (run_dir / "command.txt").read_text().strip()
    assert "--run.epochs=2" in command


def test_done_line_names_tta_only_when_it_ran_and_banner_has_threads(two_runs):
    _, out_val = two_runs["val"]
    _, out_tta = two_runs["tta"]
    done_val = [ln for ln in out_val.splitlines() if ln.startswith("done:")]
    done_tta = [ln for ln in out_tta.splitlines() if ln.startswith("done:")]
    assert len(done_val) == len(done_tta) == 1
    assert "tta" not in done_val[0]
    result = read_json(two_runs["tta"][0] / "result.json")
    assert f"(tta flip {result['final']['test_acc_tta']:.2f}%)" in done_tta[0]
    for run_dir, out in two_runs.values():
        env = read_json(run_dir / "env.json")
        assert env["torch_threads"] == 1  # OMP_NUM_THREADS=1 in the test's environment
        assert env["usable_cpus"] == len(os.sched_getaffinity(0))
        banner = out.splitlines()[0]
        assert f"threads 1/process of {env['usable_cpus']} usable CPUs" in banner, banner
