"""TensorBoard sees every run of a sweep: scalars per epoch and per step, and the HParams tab.

Two readers of the event files that `cifar_dist.engine` writes: tensorboard's EventAccumulator, and a
real `tensorboard --logdir` server on a free loopback port queried over HTTP (the routes the web
page uses), stopped in a `finally`. Values are compared with each run's metrics.jsonl/result.json.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cifar_dist.engine.logs import HPARAMS_FIXED
from tests.helpers import read_json
from tests.test_report import CELLS, SEEDS, real_sweep_dir

pytestmark = pytest.mark.slow
RUNS = [f"{c}-s{s}" for c in CELLS for s in SEEDS]
EPOCH_TAGS = ["epoch/train_loss", "epoch/train_acc", "epoch/lr", "epoch/images_per_s", "epoch/val_acc",
              "epoch/ema_val_acc", "epoch/test_acc", "epoch/test_loss", "epoch/ema_test_acc"]
FINAL_METRICS = {"hparam/test_acc": ("final", "test_acc"), "hparam/test_acc_tta": ("final", "test_acc_tta"),
                 "hparam/best_val_acc": ("best", "val_acc"), "hparam/best_test_acc": ("best", "test_acc")}


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory, tiny_data) -> Path:
    return real_sweep_dir(tmp_path_factory, tiny_data)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------ event reader


def test_event_files_hold_scalars_and_hparams_of_every_run(real_sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    for run in RUNS:
        run_dir = real_sweep / run
        acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        tags = acc.Tags()["scalars"]
        assert set(EPOCH_TAGS + ["train/loss", "train/lr", "model/params"]) <= set(tags), run

        rows = metrics(run_dir)
        for key in ("test_acc", "val_acc", "train_loss", "test_loss"):
            events = acc.Scalars(f"epoch/{key}")
            assert [e.step for e in events] == [r["epoch"] for r in rows]
            assert [e.value for e in events] == pytest.approx([r[key] for r in rows], rel=1e-6)
        # train/loss is logged every optimizer step (run.log_every_steps=1 in the sweep).
        assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, rows[-1]["step"] + 1))

        result = read_json(run_dir / "result.json")
        for tag, (part, key) in FINAL_METRICS.items():
            assert [e.value for e in acc.Scalars(tag)] == pytest.approx([result[part][key]], rel=1e-6)

        # The HParams plugin data: an experiment and a session with the sweep's varied keys (the cells'
        # override keys, run.seed for several seeds) and the short fixed set, strings as text.
        content = acc.PluginTagToContent("hparams")
        assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(content)
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        hp = start.session_start_info.hparams
        cell, seed = run.rsplit("-s", 1)
        varied = list(CELLS[cell]) + ["run.seed"]
        assert set(hp) == {*varied, *HPARAMS_FIXED}, sorted(hp)
        for key, value in CELLS[cell].items():  # the cell's override keys, with this cell's values
            assert hp[key].number_value == pytest.approx(value)
        assert hp["run.seed"].number_value == int(seed)
        assert hp["preset"].string_value == "smoke"
        assert hp["model.name"].string_value == "simple_cnn"
        experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
        assert {m.name.tag for m in experiment.metric_infos} == set(FINAL_METRICS)
        assert "optim.lr" in {h.name for h in experiment.hparam_infos}


# ---------------------------------------------------------------------------------- HTTP server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
            assert {"epoch/test_acc", "epoch/val_acc", "train/loss", "hparam/test_acc"} <= set(tags[run])

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
            assert values["hparam/test_acc"] == pytest.approx(result["final"]["test_acc"], rel=1e-6)
            assert values["hparam/best_val_acc"] == pytest.approx(result["best"]["val_acc"], rel=1e-6)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()
    assert server.returncode is not None
