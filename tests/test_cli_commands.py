"""One schema per command, one parse (issue 21, item 1): every command's options are the fields of one dataclass,
read once by `cifar_dist.runner.run_schema`; its `--help` is generated from those fields; Fire only dispatches
the subcommand names (`cifar_dist.cli.dispatch`) and parses no flag."""

from __future__ import annotations

import re
import types
from dataclasses import MISSING, fields

import fire
import pytest

from cifar_dist import runner
from cifar_dist.cli import Commands, ModelsArgs, PresetsArgs, main
from cifar_dist.cli.evaluate import EvaluateArgs, PredictArgs
from cifar_dist.cli.report import ReportArgs
from cifar_dist.cli.sweep import SCHEMAS as SWEEP_SCHEMAS
from cifar_dist.cli.sweep import Sweep
from cifar_dist.cli.train import TrainArgs
from data_prep.cli import PrepareArgs
from tests.helpers import REPO

COMMANDS: dict[str, type] = {
    "prepare": PrepareArgs, "train": TrainArgs, "evaluate": EvaluateArgs, "predict": PredictArgs,
    "models": ModelsArgs, "presets": PresetsArgs, "report": ReportArgs,
    **{f"sweep {name}": schema for name, schema in SWEEP_SCHEMAS.items()},
}
WITH_FIELDS = [c for c, s in COMMANDS.items() if fields(s)]
SPEC = "name: small\npreset: smoke\nfixed:\n  data.dir: data\n  run.epochs: 1\ngrid:\n  optim.lr: [1e-3, 2e-3]\n"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def section(text: str, heading: str) -> list[str]:
    """The lines of a help section: from the line after the one starting with `heading` to the next blank."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith(heading)), None)
    if start is None:
        return []
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start + 1:end]


def flag_fields(schema: type) -> list:
    """The fields `--help` lists as flags: those with a default, except the words after a lone `--`."""
    return [f for f in fields(schema) if (f.default is not MISSING or f.default_factory is not MISSING)
            and f.metadata.get("collect") != "--"]


def argument_fields(schema: type) -> list:
    return [f for f in fields(schema) if f not in flag_fields(schema)]


def set_help(monkeypatch, schema: type, name: str, text: str) -> None:
    f = schema.__dataclass_fields__[name]
    monkeypatch.setattr(f, "metadata", types.MappingProxyType({**f.metadata, "help": text}))


# ------------------------------------------------------------------------------------------ --help from the fields


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_exactly_the_fields_of_the_schema(command, capsys):
    schema = COMMANDS[command]
    rc, out, err = run(capsys, *command.split(), "--help")
    assert rc == 0 and err == ""
    assert out.startswith(f"usage: cifar-dist {command}")
    doc = (schema.__doc__ or "").strip().splitlines()[0]
    assert out.splitlines()[2] == doc  # the command's description, after the usage line
    flags = section(out, "flags (")
    assert len(flags) == len(flag_fields(schema))
    for line, f in zip(flags, flag_fields(schema)):
        name = f.metadata["metavar"] if f.metadata.get("collect") == "." else f"{f.name}="
        assert line.startswith(f"  --{name}") and f"  {f.metadata['help']}" in line, (line, f.name)
    arguments = section(out, "arguments:")
    assert len(arguments) == len(argument_fields(schema))
    for line, f in zip(arguments, argument_fields(schema)):
        head = f"-- {f.metadata['metavar']} ..." if f.metadata.get("collect") == "--" else f.name.upper()
        assert line.startswith(f"  {head}") and line.endswith(f"  {f.metadata['help']}"), (line, f.name)


@pytest.mark.parametrize("command", WITH_FIELDS)
def test_a_changed_field_help_is_what_help_prints(command, monkeypatch, capsys):
    """Each field of each command, its help text changed in the schema: `--help` prints the new text on that
    field's line and the old text nowhere on it."""
    schema = COMMANDS[command]
    for f in fields(schema):
        old = f.metadata["help"]
        new = f"text of {f.name} changed by the test"
        set_help(monkeypatch, schema, f.name, new)
        rc, out, _ = run(capsys, *command.split(), "--help")
        lines = [ln for ln in out.splitlines() if new in ln]
        assert rc == 0 and len(lines) == 1, (f.name, out)
        assert old not in lines[0]
        monkeypatch.undo()


def test_every_command_option_has_a_help_text():
    missing = [f"{s.__name__}.{f.name}" for s in COMMANDS.values() for f in fields(s) if not f.metadata.get("help")]
    assert missing == []
    assert all((s.__doc__ or "").strip() for s in COMMANDS.values())


def test_predict_and_submit_help_show_their_variadic_and_passthrough_arguments(capsys):
    assert run(capsys, "predict", "-h")[1].splitlines()[0] == \
        "usage: cifar-dist predict RUN_DIR IMAGES... [--flag=value ...]"
    assert run(capsys, "sweep", "submit", "-h")[1].splitlines()[0] == \
        "usage: cifar-dist sweep submit GRID [--flag=value ...] [-- SBATCH_OPTION ...]"
    out = run(capsys, "train", "-h")[1]
    assert out.splitlines()[0] == ("usage: cifar-dist train [--preset=NAME] [--config=FILE.yaml] "
                                   "[--SECTION.KEY=VALUE ...] [--resume=MODE] [--print_config]")
    assert "  --resume=MODE [auto|none|force]  auto: continue" in out and out.rstrip().endswith("is kept).")


# ------------------------------------------------------------------------------------------ one parse


BAD = {
    "prepare": (["src", "--jpeg_quality=high"], "--jpeg_quality: expected an integer, found 'high'"),
    "train": (["--print_config=3"], "--print_config: expected true or false, found '3'"),
    "evaluate": (["runs/x", "--weights=bset"], "--weights: expected one of auto, best, last, found 'bset' "
                                               "(did you mean best?)"),
    "predict": (["runs/x"], "cifar-dist predict: missing argument IMAGES (see cifar-dist predict --help)"),
    "models": (["--verbose"], "cifar-dist models: unknown flag --verbose (expected no flags; "
                              "see cifar-dist models --help)"),
    "presets": (["all"], "cifar-dist presets: unexpected argument 'all' (see cifar-dist presets --help)"),
    "report": (["runs", "--metric=acc"], "--metric: expected one of best_val_acc, "),
    "sweep plan": (["g.yaml", "--parallel=x"], "--parallel: expected a positive integer, found 'x'"),
    "sweep submit": (["g.yaml", "--dry-run=2"], "--dry-run: expected true or false, found '2'"),
    "sweep status": (["g.yaml", "--jsn"], "cifar-dist sweep status: unknown flag --jsn (expected --grid, --json; "
                                          "see cifar-dist sweep status --help) (did you mean --json?)"),
    "sweep preempt": (["g.yaml", "x"], "TASK: expected an array index (an integer >= 0), found 'x'"),
    "sweep run": (["g.yaml", "--procs=two"], "--procs: expected a positive integer, found 'two'"),
    "sweep resolve": (["g.yaml", "first"], "INDEX: expected an integer, found 'first'"),
    "sweep worker": (["g.yaml", "--", "x"], "cifar-dist sweep worker: unexpected arguments after --: x"),
}


@pytest.fixture
def parses(monkeypatch):
    """The schemas `cifar_dist.runner` parsed against, one entry per parse."""
    seen: list[type] = []
    real = runner.parse

    def counting(schema, argv, prog):
        seen.append(schema)
        return real(schema, argv, prog)

    monkeypatch.setattr(runner, "parse", counting)
    return seen


def test_the_bad_value_table_covers_every_command():
    assert set(BAD) == set(COMMANDS)


@pytest.mark.parametrize("command", BAD)
def test_a_bad_value_is_one_line_after_exactly_one_parse(command, parses, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written: no runs/, data/ or sweep folder appears
    argv, line = BAD[command]
    rc, out, err = run(capsys, *command.split(), *argv)
    assert (rc, out) == (2, "") and err.count("\n") == 1 and err.startswith(f"error: {line}"), err
    assert parses == [COMMANDS[command]]
    assert list(tmp_path.iterdir()) == []


def test_train_flags_are_parsed_once_and_text_stays_text(parses, monkeypatch, capsys):
    """The trainer's flags: one parse of its schema, then each dotted value read once by the config's own
    override machinery against its field's type (a text field keeps `000` and `1e3` as text)."""
    from cifar_dist import presets

    applied = []
    real = presets.apply_overrides

    def counting(cfg, over):
        applied.append(dict(over))
        return real(cfg, over)

    captured = {}

    def fake_train(cfg, resume):
        captured.update(cfg=cfg, resume=resume)
        return 0

    monkeypatch.setattr(presets, "apply_overrides", counting)
    monkeypatch.setattr("cifar_dist.engine.train", fake_train)
    rc, _, err = run(capsys, "train", "--preset=smoke", "--run.name=000", "--data.name", "1e3", "--optim.lr=0.2",
                     "--resume", "auto", "--model.dropout=0.25")
    assert rc == 0, err
    assert parses == [TrainArgs]
    assert applied == [{"run.name": "000", "data.name": "1e3", "optim.lr": "0.2", "model.dropout": "0.25"}]
    cfg = captured["cfg"]
    assert cfg.run.name == "000" and cfg.data.name == "1e3" and cfg.optim.lr == 0.2 and captured["resume"] == "auto"
    assert cfg.model.options["dropout"] == 0.25  # read by the model's own option types


# ------------------------------------------------------------------------------------------ Fire dispatches


@pytest.fixture
def fire_calls(monkeypatch):
    """Every fire.Fire call, in the order made, as [component type, command, name, what it returned]; each
    delegates to Fire."""
    calls = []
    real = fire.Fire

    def recording(component=None, command=None, name=None, serialize=None):
        call = [type(component), command, name]
        calls.append(call)
        call.append(real(component, command=command, name=name, serialize=serialize))
        return call[-1]

    monkeypatch.setattr(fire, "Fire", recording)
    return calls


def test_fire_dispatches_the_subcommand_and_prints_nothing_of_its_own(fire_calls, capsys):
    from cifar_dist.presets import PRESETS

    rc, out, err = run(capsys, "presets")
    assert rc == 0 and err == ""
    assert fire_calls == [[Commands, ["presets"], "cifar-dist", 0]]
    assert [ln.split()[0] for ln in out.splitlines()] == sorted(PRESETS)  # no return value printed after them


def test_the_command_s_exit_status_comes_back_through_fire(fire_calls, capsys):
    rc, out, err = run(capsys, "models", "--verbose")
    assert (rc, out) == (2, "") and err.startswith("error: cifar-dist models: unknown flag --verbose")
    assert fire_calls == [[Commands, ["models"], "cifar-dist", 2]]


def test_sweep_subcommands_are_dispatched_by_fire_too(fire_calls, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(SPEC)
    rc, out, err = run(capsys, "sweep", "resolve", "spec.yaml", "1", "--", "ignored?")
    assert rc == 2 and err == "error: cifar-dist sweep resolve: unexpected arguments after --: ignored?\n"
    rc, out, err = run(capsys, "sweep", "resolve", "spec.yaml", "1")
    assert rc == 0 and err == "" and out.startswith("--preset=smoke --data.dir=data --run.epochs=1 --optim.lr=0.002")
    assert fire_calls == [[Commands, ["sweep"], "cifar-dist", 2], [Sweep, ["resolve"], "cifar-dist sweep", 2],
                          [Commands, ["sweep"], "cifar-dist", 0], [Sweep, ["resolve"], "cifar-dist sweep", 0]]


def test_submit_passes_the_words_after_dashes_to_sbatch(monkeypatch, capsys, tmp_path):
    from cifar_dist.sweep import slurm

    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(SPEC)
    seen = {}

    def fake_submit(sweep, parallel, sbatch, dry_run):
        seen.update(parallel=parallel, sbatch=sbatch, dry_run=dry_run)
        return 0

    monkeypatch.setattr(slurm, "submit", fake_submit)
    rc, _, err = run(capsys, "sweep", "submit", "spec.yaml", "--dry-run", "--parallel", "3", "--", "--partition=gpu",
                     "--help", "-x")
    assert rc == 0, err
    assert seen == {"parallel": 3, "sbatch": ["--partition=gpu", "--help", "-x"], "dry_run": True}


# ------------------------------------------------------------------------------------------ Fire parses nothing


def test_only_the_dispatcher_imports_fire():
    pattern = re.compile(r"^\s*(import fire\b|from fire\b)", re.MULTILINE)
    users = sorted(str(p.relative_to(REPO)) for top in ("cifar_dist", "data_prep", "bench")
                   for p in (REPO / top).rglob("*.py") if pattern.search(p.read_text()))
    assert users == ["cifar_dist/cli/dispatch.py"]
    text = (REPO / "cifar_dist" / "cli" / "dispatch.py").read_text()
    assert text.count("fire.Fire(") == 1 and "command=[name]" in text  # Fire is given a subcommand name only
