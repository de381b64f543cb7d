"""The command line as a program (sweep 48): options given twice, usage errors that say how
to fix them."""

from __future__ import annotations

import argparse

import pytest

from cellsynth import cli
from test_cli import _parsers


def _usage_error(capsys, *argv: str) -> str:
    """The message of the usage error (exit 2) that ``cellsynth ARGV`` ends in."""
    with pytest.raises(SystemExit) as exc:
        cli.main(list(argv))
    assert exc.value.code == 2
    return " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("argv", [
    ["run", "--out", "a", "--out", "b", "--set", "seed=-1"],  # fails fast unfixed
    ["config", "show", "--label-key=x", "--label-key=y"],
    ["evaluate", "--real", "a.h5ad", "--real", "b.h5ad", "--synthetic", "s", "--label-key", "k",
     "--out", "d"],
    ["simulate", "--cells", "10", "--cells", "20", "--out", "x.h5ad"],
    ["report", "RUN", "--out", "a.html", "--out", "b.html"],
])
def test_an_option_of_one_value_given_twice_is_refused(capsys, argv, tmp_path, monkeypatch):
    """``cellsynth evaluate --real a.h5ad ... --real b.h5ad`` scored b.h5ad alone, ``run --out a
    --out b`` wrote to b, without a word: only fit's, generate's and benchmark's options refused
    a repeat. Every option of one value does now, naming both values."""
    monkeypatch.chdir(tmp_path)  # what the command would write without the fix
    err = _usage_error(capsys, *argv)
    assert "given twice" in err and "give it once" in err


def test_every_option_of_one_value_refuses_a_repeat():
    """The class closed: no command has an option argparse would overwrite."""
    for name, parser in _parsers(cli.build_parser()):
        for action in parser._actions:
            assert type(action) is not argparse._StoreAction, f"{name} {action.dest}"


@pytest.mark.parametrize(("argv", "hint"), [
    (["rn"], "(did you mean 'run'?); `cellsynth --help` lists them"),
    (["config", "shwo"], "(did you mean 'show'?)"),
    ([], "`cellsynth --help` says what each is"),
    (["config", "show", "--labelkey", "x"], "cellsynth config show: error: unrecognized arguments: "
     "--labelkey (did you mean '--label-key'?); `cellsynth config show --help` lists its options"),
    (["config", "show", "--label-key", "-x"], "a value starting with '-' as --label-key=VALUE"),
    (["info", "--json=1", "x"], "--json takes no value"),
])
def test_a_usage_error_says_how_to_fix_it(capsys, argv, hint):
    """``cellsynth rn`` listed the commands but not the one meant; ``config show --labelkey x``
    was refused by the top command ('cellsynth: error: unrecognized arguments', its usage), not
    naming the option meant; ``--label-key -x`` said 'expected one argument', not how to give a
    value starting with '-'. Each now says how to fix it."""
    assert hint in _usage_error(capsys, *argv)


@pytest.mark.parametrize(("argv", "hint"), [
    (["run", "--seed", "1"], "it is a setting, given as --set seed=VALUE"),
    (["run", "--model", "nb"], "--set generator.model=VALUE"),
    (["config", "show", "--max-epochs=3"], "--set cvae.max_epochs=VALUE"),
])
def test_a_setting_given_as_an_option_says_to_give_it_with_set(capsys, argv, hint):
    """``cellsynth run --seed 1`` (fit's and generate's option) or ``run --model nb`` was
    refused as an unknown argument, not saying that run takes them as settings (--set)."""
    assert hint in _usage_error(capsys, *argv)


@pytest.mark.parametrize("argv", [["info", "-x.h5ad"], ["config", "show", "-x.h5ad"]])
def test_a_path_starting_with_a_dash_says_to_give_it_after_two_dashes(capsys, argv):
    """``cellsynth info -x.h5ad`` said 'the following arguments are required: path' (the path
    was given), ``config show -x.h5ad`` 'unrecognized arguments': neither said that argparse
    took the path for an option, nor how to give it."""
    err = _usage_error(capsys, *argv)
    assert "-x.h5ad was taken for an option" in err and "-- -x.h5ad" in err


def test_the_dash_hint_is_not_given_without_such_a_path(capsys):
    assert "taken for an option" not in _usage_error(capsys, "info")
    assert "taken for an option" not in _usage_error(capsys, "info", "--jsn", "x")


@pytest.mark.parametrize(("argv", "flag"), [
    (["generate", "m", "--n-per-type", "1e3", "--out", "x.h5ad"], "--n-per-type"),
    (["simulate", "--cells", "1,000", "--out", "x.h5ad"], "--cells"),
])
def test_a_number_not_in_digits_says_how_to_write_it(capsys, argv, flag):
    """``--n-per-type 1e3`` or ``--cells 1,000`` said "invalid int value: '1e3'", not how to
    write the number."""
    assert f"give a whole number in digits, e.g. {flag} 1000" in _usage_error(capsys, *argv)


@pytest.mark.parametrize(("argv", "name"), [
    (["config", "show", "--label-key="], "--label-key"),
    (["info", ""], "path"),
    (["report", ""], "run_dir"),
    (["evaluate", "--real", "", "--synthetic", "s", "--label-key", "k", "--out", "d"], "--real"),
])
def test_an_empty_value_is_refused_as_unset(capsys, argv, name):
    """``config show DATA --label-key "$KEY"`` with KEY unset showed label_key = "" as the
    setting a run would use; ``info ""`` and ``report ""`` described the current folder ('.
    is not a run directory'), a path the user never gave. An empty value is refused, as --out's
    and --config's already were."""
    err = _usage_error(capsys, *argv)
    assert f"argument {name}: is empty ('';" in err and "not set" in err
