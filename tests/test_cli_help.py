"""What a newcomer reads: help written for users, and "did you mean" on a misspelt command, flag or value."""

from __future__ import annotations

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
