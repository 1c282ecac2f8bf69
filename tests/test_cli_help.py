"""What a newcomer reads: help written for users, and "did you mean" on a misspelt command, flag or value."""

from __future__ import annotations

import types
from dataclasses import fields, is_dataclass

import pytest

from cifar_dist.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_top_level_help_is_for_users(capsys):
    rc, out, _ = run(capsys, "--help")
    assert rc == 0
    assert out.startswith("usage: cifar-dist COMMAND")
    for command in ("prepare", "train", "evaluate RUN_DIR", "predict RUN_DIR IMAGES...", "models", "presets",
                    "sweep", "report"):
        assert f"\n  {command}" in out, command
    assert "cifar_dist." not in out and "thin shell" not in out.lower()  # no module names, no developer notes


@pytest.mark.parametrize("command, usage", [("evaluate", "usage: cifar-dist evaluate RUN_DIR [--flag=value ...]"),
                                            ("predict", "usage: cifar-dist predict RUN_DIR IMAGES... [--flag=value ...]")])
def test_evaluate_and_predict_help(capsys, command, usage):
    rc, out, _ = run(capsys, command, "--help")
    assert rc == 0 and out.splitlines()[0] == usage
    assert "--weights=WHICH" in out
    # each flag explained once, not listed again with its default
    assert sum(ln.lstrip().startswith("--weights=") for ln in out.splitlines()) == 1


@pytest.mark.parametrize("argv, hint", [
    (["evalute", "x"], "unknown command 'evalute'"),
    (["train", "--optim.nme=sgd"], "(did you mean --optim.name?)"),
    (["train", "--optm.lr=0.1"], "(did you mean optim?)"),
    (["train", "--optim.name=adamm"], "(did you mean adam?)"),
    (["train", "--preset=smok"], "(did you mean smoke?)"),
    (["train", "--resme=auto"], "(did you mean --resume?)"),
    (["evaluate", "runs/x", "--weigths=best"], "(did you mean --weights?)"),
    (["sweep", "stauts", "x.yaml"], "(did you mean status?)"),
])
def test_misspelt_names_get_a_suggestion(capsys, argv, hint):
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and hint in err, err
    if argv[0] == "evalute":
        assert "(did you mean evaluate?)" in err


def test_limit_train_help_says_class_balanced(capsys):
    from cifar_dist.cli.train import train_help

    text = train_help()
    line = next(ln for ln in text.splitlines() if "--data.limit_train=" in ln)
    assert "class-balanced" in line and "first N" not in text


def test_train_help_has_a_usage_line_and_one_model_options_heading(capsys):
    rc, out, _ = run(capsys, "train", "--help")
    assert rc == 0 and out.startswith("usage: cifar-dist train [--preset=NAME]")
    assert out.count("Model options (") == 1


def _set_help(monkeypatch, schema: type, name: str, text: str) -> None:
    """Give field `name` of `schema` another help text (undone after the test)."""
    f = schema.__dataclass_fields__[name]
    monkeypatch.setattr(f, "metadata", types.MappingProxyType({**f.metadata, "help": text}))


def test_prepare_help_is_read_from_the_fields(monkeypatch, capsys):
    """The help of a PrepOptions field changed in the schema is what `prepare --help` prints, nothing stale."""
    from data_prep.options import PrepOptions

    _set_help(monkeypatch, PrepOptions, "jpeg_quality", "quality text changed by the test")
    rc, out, err = run(capsys, "prepare", "--help")
    assert rc == 0 and err == ""
    assert "\n  --jpeg_quality=90  quality text changed by the test\n" in out
    assert "JPEG quality 1..100" not in out


def test_train_help_is_read_from_the_config_fields(monkeypatch, capsys):
    from cifar_dist.config import DataConfig, OptimConfig

    _set_help(monkeypatch, OptimConfig, "lr", "lr text changed by the test")
    _set_help(monkeypatch, DataConfig, "loader", "loader text changed by the test")
    rc, out, err = run(capsys, "train", "--help")
    assert rc == 0 and err == ""
    assert "\n    --optim.lr=0.1  (float)  lr text changed by the test\n" in out
    assert "\n    --data.loader=tensor  (str) [tensor|ffcv]  loader text changed by the test\n" in out
    assert "peak learning rate" not in out and "whole split resident" not in out


def test_train_help_lists_every_config_key_once_under_one_heading_per_section(capsys):
    from cifar_dist.config import Config

    rc, out, _ = run(capsys, "train", "--help")
    lines = out.splitlines()
    for section in fields(Config):
        if not is_dataclass(section.default_factory):
            continue
        assert lines.count(f"  {section.name}:") == 1, section.name
        for f in fields(section.default_factory):
            shown = [ln for ln in lines if ln.startswith(f"    --{section.name}.{f.name}=")]
            assert len(shown) == (f.name != "options"), (section.name, f.name)  # options: under Model options
    assert "    --data.mean=(0.4914, 0.4822, 0.4465)  (tuple[float, ...])  normalisation mean" in out


def test_every_option_has_a_help_text():
    from cifar_dist.config import Config
    from data_prep.cli import PrepareArgs

    schemas = [PrepareArgs] + [f.default_factory for f in fields(Config) if is_dataclass(f.default_factory)]
    missing = [f"{s.__name__}.{f.name}" for s in schemas for f in fields(s) if not f.metadata.get("help")]
    assert missing == []
