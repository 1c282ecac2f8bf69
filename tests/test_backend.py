"""The sweep backend seam (cifar_dist.sweep.backend): both built-in backends implement the protocol, a third
one registered here is read by `sweep status` and the lease rules, the local backend's `queued()` follows a
real local run, and the one flag builder gives the flags of a grid run and of a search trial's segment."""

from __future__ import annotations

import inspect
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cifar_dist.sweep import backend as seam
from cifar_dist.sweep.backend import Backend, Queued, register_backend
from cifar_dist.sweep.local import LocalBackend, LocalRunner
from cifar_dist.sweep.plan import Sweep, load_sweep
from cifar_dist.sweep.slurm import SlurmBackend
from cifar_dist.sweep.status import run_state, status_rows
from cifar_dist.sweep.study import Claim, lease_is_stale
from cifar_dist.sweep.worker import Worker
from tests.helpers import REPO

MEMBERS = ("submit", "look", "queued", "owns", "holds")


def _spec(d: Path, text: str) -> Path:
    path = d / "spec.yaml"
    path.write_text(text)
    return path


def _grid(d: Path) -> Sweep:
    return load_sweep(_spec(d, f"name: st\npreset: smoke\nout_dir: {d / 'runs'}\nfixed:\n  run.epochs: 4\n"
                               "grid:\n  optim.lr: [0.1, 0.2]\nseeds: 2\n"), count=False)


@dataclass(frozen=True)
class FakeBackend:
    """A third backend: a queue it keeps in memory; its workers are named fake-<n>."""

    held: dict = field(default_factory=dict)  # run or worker name -> Queued
    name: str = "fake"

    def submit(self, sweep, runs, parallel) -> int:
        self.held.update({r.name: Queued("pending", f"fake queue, {parallel} at a time") for r in runs})
        return 0

    def look(self, sweep):
        return None

    def queued(self, runs, look):
        return {r.name: self.held[r.name] for r in runs if r.name in self.held}

    def owns(self, worker: str) -> bool:
        return worker.startswith("fake-")

    def holds(self, worker: str, look) -> bool | None:
        return worker in self.held


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(seam, "_BACKENDS", dict(seam._BACKENDS))  # registered for this test only
    return register_backend(FakeBackend())


def test_both_backends_implement_the_protocol_and_are_registered():
    assert [b.name for b in seam.backends()] == ["local", "slurm"]
    assert isinstance(seam.get_backend("local"), LocalBackend)
    assert isinstance(seam.get_backend("slurm"), SlurmBackend)
    for impl in (LocalBackend, SlurmBackend, FakeBackend):
        for member in MEMBERS:
            params = list(inspect.signature(getattr(impl, member)).parameters)
            assert params == list(inspect.signature(getattr(Backend, member)).parameters), (impl, member)
    with pytest.raises(ValueError, match="'local' is already registered"):
        register_backend(LocalBackend())


def test_a_third_backend_is_read_by_status_and_the_lease_rules(tmp_path, fake):
    s = _grid(tmp_path)
    assert fake.submit(s, s.runs[1:3], 2) == 0
    fake.held["c001-s1"] = Queued("running", "fake job 7")
    rows = {r["run"]: (r["state"], r["detail"]) for r in status_rows(s, None)}
    assert rows == {"c000-s0": ("pending", "not started"), "c000-s1": ("pending", "fake queue, 2 at a time"),
                    "c001-s0": ("pending", "fake queue, 2 at a time"), "c001-s1": ("running", "fake job 7")}
    assert run_state(s.runs[3], None) == ("running", "fake job 7")
    search = load_sweep(_spec(tmp_path, SEARCH.format(out=tmp_path / "runs")), count=False).spec.search
    old = {"lease": "preempted", "worker": "fake-1", "host": "elsewhere", "pid": 1, "heartbeat": time.time() - 1e4}
    assert lease_is_stale(old, search, lambda name: None)  # not held by its backend: taken over
    fake.held["fake-1"] = Queued("pending", "requeued")
    assert not lease_is_stale(old, search, lambda name: None)  # still held (requeued): it waits, however old its heartbeat
    assert not lease_is_stale(old, search, lambda name: {"asked": name})


def test_local_queued_follows_a_real_local_run(tmp_path, monkeypatch):
    """A run the local runner started (the stand-in trainer, a real process) is held while it lives; a stopped
    one is not, and a record of a runner that is gone reads as failed."""
    s = _grid(tmp_path)
    local = LocalBackend()
    runner = LocalRunner(s, procs=1)
    monkeypatch.setattr(runner, "command", lambda run: [sys.executable, str(REPO / "tests" / "fake_trainer.py"),
                                                        *s.train_flags(run)])
    monkeypatch.setenv("FAKE_STEP_S", "0.5")
    run = s.runs[2]
    runner.start(run)
    assert local.queued(s.runs, None) == {"c001-s0": Queued("running", "local")}
    assert local.look(s) is None and run_state(run, None) == ("running", "local")
    runner.on_signal(signal.SIGTERM, None)
    for proc in list(runner.active):
        proc.wait(timeout=60)
    runner.reap()
    assert run.files.read_task()["state"] == "preempted" and local.queued(s.runs, None) == {}
    record = {**run.files.read_task(), "state": "running", "pid": 2 ** 22 + 17}  # no such process
    run.files.task.write_text(json.dumps(record))
    assert local.queued([run], None) == {"c001-s0": Queued("failed", "local runner gone before the run finished")}


SEARCH = """\
name: srch
preset: smoke
out_dir: {out}
fixed:
  data.dir: data
  run.global_batch_size: 20
  data.val_size: 100
grid:
  optim.lookahead: [true, false]
random:
  params:
    optim.lr: {{loguniform: [1.0e-4, 1.0e-1]}}
search:
  trials: 4
  epochs: {{min: 1, max: 4, reduction_factor: 2}}
  sampler: random
"""


def test_one_flag_builder_for_a_grid_run_and_a_trial_segment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = _grid(tmp_path)
    out = tmp_path / "runs" / "st"
    assert s.train_flags(s.runs[3]) == [
        "--preset=smoke", "--run.epochs=4", "--optim.lr=0.2",
        f"--run.out_dir={out}", "--run.name=c001-s1", "--run.seed=1", "--resume=auto"]
    sw = load_sweep(_spec(tmp_path, SEARCH.format(out="runs")), count=False)
    c = Claim(3, 4, sw.dir / "t003-s0", {"optim.lookahead": False, "optim.lr": 0.0123}, "token", "new")
    assert Worker(sw, "local-0").trial_flags(c, 2) == [
        "--preset=smoke", "--data.dir=data", "--run.global_batch_size=20", "--data.val_size=100", "--run.epochs=4",
        "--optim.lookahead=false", "--optim.lr=0.0123",
        "--run.out_dir=runs/srch", "--run.name=t003-s0", "--run.seed=0", "--run.stop_after=2", "--resume=auto"]
    c_preset = Claim(5, 6, sw.dir / "t005-s0", {"preset": "seed003_simple_cnn", "optim.lr": 0.5}, "token", "new")
    assert Worker(sw, "local-0").trial_flags(c_preset, 0) == [
        "--preset=seed003_simple_cnn", "--data.dir=data", "--run.global_batch_size=20", "--data.val_size=100", "--run.epochs=4",
        "--optim.lr=0.5", "--run.out_dir=runs/srch", "--run.name=t005-s0", "--run.seed=0", "--run.stop_after=0",
        "--resume=auto"]
