"""One schema, one parse: a command line read once against a dataclass's fields (`cifar_dist.schema`), run by
`cifar_dist.runner.run_schema`, with `--help` generated from the same fields."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from cifar_dist.errors import InputError
from cifar_dist.runner import run_schema
from cifar_dist.schema import after_dashes, dotted_flags, opt, parse, schema_help


@dataclass(frozen=True)
class Tiny:
    """Copy SRC a few times."""

    src: str = opt(help="what to copy")
    n: int = opt(3, "how many copies")
    fast: bool = opt(False, "skip the checks")
    color: bool | None = opt(None, "colour output (none: only on a terminal)")
    sizes: tuple[int, ...] = opt((1, 2), "smallest and largest size")
    tag: str | None = opt(None, "a label kept as text")
    rate: float = opt(0.5, "copies per second")


@pytest.mark.parametrize("argv, expected", [
    (["a"], Tiny("a")),
    (["--n", "5", "a", "--fast", "--nocolor", "--sizes=3,4", "--tag=000", "--rate", "-2"],
     Tiny("a", 5, True, False, (3, 4), "000", -2.0)),
    (["--src=b", "--fast=false", "--color=YES", "--sizes", "[7]", "--tag=1e3", "--n=1_000"],
     Tiny("b", 1000, False, True, (7,), "1e3")),
    (["7", "--tag=none", "--color=none", "--n=0"], Tiny("7", 0, tag=None)),
])
def test_values_are_read_once_as_their_fields_types(argv, expected):
    assert parse(Tiny, argv, "p") == expected


@pytest.mark.parametrize("argv, line", [
    (["a", "--fats"], "p: unknown flag --fats (expected --src, --n, --fast, --color, --sizes, --tag, --rate; see p "
                      "--help) (did you mean --fast?)"),
    (["a", "--n=abc"], "--n: expected an integer, found 'abc'"),
    (["a", "--rate=fast"], "--rate: expected a number, found 'fast'"),
    (["a", "--fast=maybe"], "--fast: expected true or false, found 'maybe'"),
    (["a", "--nofast=1"], "p: --nofast takes no value, found '--nofast=1'"),
    (["a", "--n"], "p: --n expects a value (--n=VALUE)"),
    (["a", "--n", "--fast"], "p: --n expects a value (--n=VALUE)"),
    ([], "p: missing argument SRC (see p --help)"),
    (["a", "b"], "p: unexpected argument 'b' (see p --help)"),
    (["--src=a", "b"], "p: unexpected argument 'b' (see p --help)"),
    (["a", "-"], "p: unexpected argument '-' (see p --help)"),
    (["a", "-n", "3"], "p: unknown flag '-n'; flags are --name=value (see p --help)"),
])
def test_what_the_schema_does_not_take_is_one_line(argv, line):
    with pytest.raises(InputError) as e:
        parse(Tiny, argv, "p")
    assert e.value.one_line() == line


def test_run_schema_calls_the_function_with_the_fields(capsys):
    seen = {}

    def copy(src: str, **options) -> int:
        seen.update(options, src=src)
        return 7

    assert run_schema(copy, Tiny, ["a", "--n=4"], "p") == 7
    assert seen == {"src": "a", "n": 4, "fast": False, "color": None, "sizes": (1, 2), "tag": None, "rate": 0.5}
    seen.clear()
    assert run_schema(copy, Tiny, ["a", "--n=z"], "p") == 2 and seen == {}  # nothing ran
    assert capsys.readouterr() == ("", "error: --n: expected an integer, found 'z'\n")
    assert run_schema(copy, Tiny, ["--bogus", "-h"], "p", epilog="examples: none") == 0 and seen == {}
    out, err = capsys.readouterr()
    assert err == "" and out == schema_help(Tiny, "p", "examples: none")


def test_help_is_generated_from_the_fields():
    assert schema_help(Tiny, "p", "examples:\n  p a --n=2\n").splitlines() == [
        "usage: p SRC [--flag=value ...]",
        "",
        "Copy SRC a few times.",
        "",
        "arguments:",
        "  SRC  what to copy",
        "",
        "flags (--flag=value or --flag value; a boolean flag alone is true, --noflag false):",
        "  --n=3  how many copies",
        "  --fast=false  skip the checks",
        "  --color=none  colour output (none: only on a terminal)",
        "  --sizes=(1, 2)  smallest and largest size",
        "  --tag=none  a label kept as text",
        "  --rate=0.5  copies per second",
        "",
        "examples:",
        "  p a --n=2",
    ]


@dataclass(frozen=True)
class Rich:
    """Send FILES somewhere."""

    dest: str = opt(help="where to")
    files: tuple[str, ...] = opt(help="what to send")
    mode: str | None = opt(None, "how (default: the destination's own)", metavar="MODE", choices=("none", "fast"))
    count: int = opt(1, "copies", metavar="N", expected="a count", usage=True)
    dry: bool = opt(False, "say what would be sent", usage=True)
    extra: tuple[str, ...] = after_dashes("options of the transport", "OPTION")


@dataclass(frozen=True)
class Dotted:
    """Set keys."""

    name: str = opt("x", "a name", metavar="NAME", usage=True)
    keys: tuple[tuple[str, str], ...] = dotted_flags("one key")


@pytest.mark.parametrize("argv, expected", [
    (["d", "a", "b", "--mode=none"], Rich("d", ("a", "b"), "none")),  # a choice stays text: "none", not None
    (["d", "a", "--count", "3", "--dry", "--", "--fast", "-x", "--"], Rich("d", ("a",), None, 3, True,
                                                                         ("--fast", "-x", "--"))),
    (["--files=[a, b]", "d"], Rich("d", ("a", "b"))),
])
def test_variadic_choices_and_the_words_after_dashes(argv, expected):
    assert parse(Rich, argv, "p") == expected


@pytest.mark.parametrize("argv, line", [
    (["d"], "p: missing argument FILES (see p --help)"),
    (["d", "a", "--mode=slow"], "--mode: expected one of none, fast, found 'slow'"),
    (["d", "a", "--mode=fats"], "--mode: expected one of none, fast, found 'fats' (did you mean fast?)"),
    (["d", "a", "--count=many"], "--count: expected a count, found 'many'"),
])
def test_rich_fields_refuse_in_one_line(argv, line):
    with pytest.raises(InputError) as e:
        parse(Rich, argv, "p")
    assert e.value.one_line() == line


def test_dotted_flags_are_kept_as_text_in_order():
    args = parse(Dotted, ["--a.b=000", "--name", "n", "--c.d", "1e3", "--a.b=2"], "p")
    assert args == Dotted("n", (("a.b", "000"), ("c.d", "1e3"), ("a.b", "2")))
    with pytest.raises(InputError, match=r"^p: unknown flag --keys \(expected --name; see p --help\)"):
        parse(Dotted, ["--keys=1"], "p")  # the collecting field is no flag of its own
    with pytest.raises(InputError, match=r"^p: unexpected arguments after --: x$"):
        parse(Dotted, ["--", "x"], "p")  # nothing collects the words after --
    with pytest.raises(InputError, match=r"^p: --a.b expects a value"):
        parse(Dotted, ["--a.b"], "p")


def test_rich_help_is_generated_from_the_fields():
    assert schema_help(Rich, "p").splitlines()[:14] == [
        "usage: p DEST FILES... [--count=N] [--dry] [--flag=value ...] [-- OPTION ...]",
        "",
        "Send FILES somewhere.",
        "",
        "arguments:",
        "  DEST  where to",
        "  FILES...  what to send",
        "  -- OPTION ...  options of the transport",
        "",
        "flags (--flag=value or --flag value; a boolean flag alone is true, --noflag false):",
        "  --mode=MODE [none|fast]  how (default: the destination's own)",
        "  --count=N  copies (default: 1)",
        "  --dry=false  say what would be sent",
    ]
    assert schema_help(Dotted, "p").splitlines()[0] == "usage: p [--name=NAME] [--SECTION.KEY=VALUE ...]"
    assert "  --SECTION.KEY=VALUE  one key" in schema_help(Dotted, "p").splitlines()


def test_a_callable_epilog_is_called_only_for_the_help(capsys):
    calls = []

    def epilog() -> str:
        calls.append(1)
        return "late text"

    assert run_schema(lambda **kw: 0, Dotted, ["--a.b=1"], "p", epilog=epilog) == 0 and calls == []
    assert run_schema(lambda **kw: 0, Dotted, ["--help"], "p", epilog=epilog) == 0 and calls == [1]
    assert capsys.readouterr().out.endswith("\nlate text\n")
