"""cifar_dist.run_dir: the names of a run directory's files, `is_finished`, the one JSON-lines reader (with its
torn-tail option), result.json and status.json, the rank-0 check, and that no other module of the package
spells a JSON file name itself."""

from __future__ import annotations

import ast
import json
import re

import pytest

from cifar_dist.files import FileFormatError
from cifar_dist.run_dir import (
    RUN_NAME,
    RunDir,
    is_rank0,
    read_jsonl,
    read_sweep_json,
    run_name,
    trial_name,
)
from tests.helpers import REPO

ROW1, ROW2 = {"epoch": 1, "val_acc": 40.5}, {"epoch": 2, "val_acc": 52.25}
RESULT = {"status": "finished", "final": {"test_acc": 61.0}, "best": {"epoch": 2, "val_acc": 62.0}}


def _lines(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def test_paths_are_the_names_the_scripts_and_the_report_read(tmp_path):
    files = RunDir(str(tmp_path))  # a str is taken too
    names = {"config": "config.yaml", "command": "command.txt", "env": "env.json", "metrics": "metrics.jsonl",
             "result": "result.json", "status": "status.json", "paused": "paused.json", "task": "sweep_task.json",
             "trial": "trial.json", "checkpoints": "checkpoints", "events": "events.out.tfevents.*"}
    assert {k: getattr(files, k) for k in names} == {k: tmp_path / v for k, v in names.items()}
    # slurm/lib.sh and slurm/sweep.sh spell two of them in shell: they must agree
    scripts = (REPO / "slurm" / "lib.sh").read_text() + (REPO / "slurm" / "sweep.sh").read_text()
    assert '/status.json"' in scripts and '/sweep_task.json"' in scripts and '/result.json' in scripts


def test_is_finished_holds_run_and_traces(tmp_path):
    files = RunDir(tmp_path / "run")
    assert not files.is_finished and not files.holds_run and files.traces() == []
    files.path.mkdir()
    (files.path / "notes.txt").write_text("x")
    assert not files.holds_run and files.traces() == []
    files.metrics.write_text(_lines(ROW1))
    assert files.holds_run and not files.is_finished and files.traces() == ["metrics.jsonl"]
    files.checkpoints.mkdir()
    (files.path / "events.out.tfevents.1.host").write_bytes(b"")
    files.result.write_text(json.dumps(RESULT))
    assert files.is_finished
    assert files.traces() == ["metrics.jsonl", "result.json", "checkpoints", "events.out.tfevents.*"]
    assert files.event_files() == [files.path / "events.out.tfevents.1.host"]
    assert not RunDir(files.metrics).holds_run  # a file is no run directory


def test_read_jsonl_reads_objects_and_names_a_bad_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    assert read_jsonl(path) == []  # missing: no rows
    path.write_text(_lines(ROW1, "", ROW2))
    assert read_jsonl(path) == [ROW1, ROW2]  # blank lines skipped
    path.write_text(_lines(ROW1, "garbage", ROW2))
    with pytest.raises(FileFormatError, match=re.escape(f"{path}:2: expected one JSON object per line, found 'garbage'")):
        read_jsonl(path)
    path.write_text(_lines(ROW1, "[1, 2]"))
    with pytest.raises(FileFormatError, match=re.escape(f"{path}:2: expected one JSON object per line")):
        read_jsonl(path)
    path.write_text(_lines(ROW1, {"step": 6}))
    assert read_jsonl(path) == [ROW1, {"step": 6}]
    with pytest.raises(FileFormatError, match=re.escape(f'{path}:2: expected an object with an integer "epoch"')):
        read_jsonl(path, int_key="epoch")
    path.write_text(_lines(ROW1, {"epoch": True}))  # a boolean is no epoch number
    with pytest.raises(FileFormatError, match=":2: expected an object with an integer"):
        read_jsonl(path, int_key="epoch")
    path.write_bytes(b'{"epoch": 1}\n\xff\xfe\n')
    with pytest.raises(FileFormatError, match=re.escape(f"{path}: cannot read")):
        read_jsonl(path)


def test_torn_tail_is_left_out_and_handed_over_only_at_the_end(tmp_path):
    path = tmp_path / "metrics.jsonl"
    torn = '{"epoch": 3, "val_a'
    path.write_text(_lines(ROW1, ROW2) + torn)  # a write cut short: no newline either
    with pytest.raises(FileFormatError, match=re.escape(f"{path}:3: expected one JSON object per line")):
        read_jsonl(path)  # without the option a torn tail is an error like any bad line
    seen: list[str] = []
    assert read_jsonl(path, on_torn_tail=seen.append) == [ROW1, ROW2]
    assert seen == [torn]
    path.write_text(_lines(ROW1, ROW2))
    seen.clear()
    assert read_jsonl(path, on_torn_tail=seen.append) == [ROW1, ROW2] and seen == []  # whole lines: no call
    path.write_text(_lines(ROW1, torn, ROW2))  # a bad line before the last is damage, not a torn write
    with pytest.raises(FileFormatError, match=re.escape(f"{path}:2: expected one JSON object per line")):
        read_jsonl(path, on_torn_tail=seen.append)
    path.write_text(_lines(ROW1, {"step": 6}))  # a whole object without its epoch is not torn either
    with pytest.raises(FileFormatError, match=':2: expected an object with an integer "epoch"'):
        RunDir(tmp_path).metrics_rows(on_torn_tail=seen.append)
    assert seen == []


def test_metrics_rows_and_last_metrics(tmp_path):
    files = RunDir(tmp_path)
    assert files.metrics_rows() == [] and files.last_metrics() is None
    files.metrics.write_text(_lines(ROW1, ROW2) + '{"epoch": 3, "val')
    assert files.last_metrics() == ROW2  # the run may be writing: the last whole row
    with pytest.raises(FileFormatError, match=":3: expected one JSON object per line"):
        files.metrics_rows()
    files.metrics.write_text(_lines(ROW1, "garbage", ROW2))
    assert files.last_metrics() is None  # a damaged file shows no row, and raises nothing
    files.metrics.write_text(_lines({"step": 1}))
    assert files.last_metrics() == {"step": 1}  # the status table shows what there is (epoch 0)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ("[1]", "expected a JSON object, found list"),
    (json.dumps({"final": {"test_acc": 1.0}}), "expected an object under 'best', found None"),
    (json.dumps({"final": {"test_acc": "high"}, "best": {}}), "expected a number at final.test_acc, found 'high'"),
])
def test_read_result_strict_names_the_file_lenient_takes_any_object(tmp_path, text, message):
    files = RunDir(tmp_path)
    assert files.read_result() is None and files.read_result(strict=True) is None  # not finished
    files.result.write_text(text)
    assert files.is_finished and files.read_result() == (json.loads(text) if text.startswith("{\"") else None)
    with pytest.raises(FileFormatError, match=re.escape(f"{files.result}: {message}")):
        files.read_result(strict=True)
    files.result.write_text(json.dumps(RESULT))
    assert files.read_result() == files.read_result(strict=True) == RESULT


def test_status_task_and_trial_records(tmp_path, monkeypatch):
    files = RunDir(tmp_path)
    monkeypatch.delenv("RANK", raising=False)
    assert files.read_status() is None and files.read_task() == {} and files.read_trial() == {}
    files.write_status(3)
    assert {k: files.read_status()[k] for k in ("exit", "state")} == {"exit": 3, "state": "stopped"}
    files.write_status(7)  # an exit status without a name is a failure
    assert files.read_status()["state"] == "failed"
    files.status.write_text('{"exit": "3"}\n')
    assert files.read_status() is None
    monkeypatch.setenv("RANK", "2")
    files.status.unlink()
    files.write_status(0)
    assert not files.status.exists()  # only global rank 0 writes it
    files.task.write_text('{"state": "running", "job": "local"}')
    files.trial.write_text("[not an object]")
    assert files.read_task() == {"state": "running", "job": "local"} and files.read_trial() == {}


@pytest.mark.parametrize("env, rank0, local0", [
    ({}, True, True),  # no launcher: a single process
    ({"RANK": "0", "LOCAL_RANK": "0"}, True, True),
    ({"RANK": "3", "LOCAL_RANK": "0"}, False, True),  # first process of the second node's launcher
    ({"RANK": "0", "LOCAL_RANK": "1"}, True, False),  # (not a real layout: each check reads its own variable)
    ({"RANK": "1"}, False, False),  # LOCAL_RANK unset: the local check falls back to RANK
    ({"RANK": "", "LOCAL_RANK": ""}, True, True),  # set but empty counts as unset
    ({"RANK": " 0\n"}, True, True),
])
def test_is_rank0_global_and_per_launcher(monkeypatch, env, rank0, local0):
    for key in ("RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert (is_rank0(), is_rank0(local=True)) == (rank0, local0)


def test_sweep_folder_names(tmp_path):
    assert run_name("c003", 2) == "c003-s2" and trial_name(7, 0) == "t007-s0"
    assert RUN_NAME.match(trial_name(12, 3)).groupdict() == {"cell": "t012", "seed": "3"}
    assert RUN_NAME.match("c000-s") is None
    assert read_sweep_json(tmp_path) is None
    (tmp_path / "sweep.json").write_text("[1, 2]")
    assert read_sweep_json(tmp_path) is None
    (tmp_path / "sweep.json").write_text('{"name": "g", "cells": []}')
    assert read_sweep_json(tmp_path) == {"name": "g", "cells": []}


def test_no_module_but_run_dir_spells_a_json_file_name():
    """A JSON file name is written once, in cifar_dist.run_dir (f-string pieces such as data's
    `{name}_manifest.json`, which data_prep defines, are not file names of a run)."""
    found = []
    for path in sorted((REPO / "cifar_dist").rglob("*.py")):
        if path.name == "run_dir.py" and path.parent.name == "cifar_dist":
            continue
        tree = ast.parse(path.read_text())
        pieces = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
        found += [f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in pieces
                  and re.fullmatch(r"[\w.-]+\.jsonl?", node.value)]
    assert found == []
