"""The command line a user reads: help on every option, where settings come from, ranges.

No test here runs the pipeline: ``cellsynth run`` is checked up to the call of
``pipeline.run``, which a stand-in records.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
import types

import pytest

import cellsynth
from cellsynth import cli, cli_signals, config, config_sources
from cellsynth.presets import demo_config_path


def _parsers(parser: argparse.ArgumentParser, name: str = "cellsynth"):
    """Every parser under ``parser`` (itself included), with its command line name."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


PARSERS = dict(_parsers(cli.build_parser()))


def test_the_commands_are_all_walked():
    assert {"cellsynth run", "cellsynth fit", "cellsynth config show", "cellsynth config defaults",
            "cellsynth benchmark", "cellsynth info"} <= set(PARSERS)


def test_python_dash_m_is_the_command():
    """``python -m cellsynth``, for an environment whose scripts are not on the PATH."""
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "cellsynth", "--version"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("cellsynth "), proc


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_option_has_help_and_shows_its_default(name):
    parser = PARSERS[name]
    if name != "cellsynth":
        assert parser.description and len(parser.description) > 40, f"{name}: no description"
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        assert action.help and action.help.strip(), f"{name} {action.dest}: no help"
        optional = action.option_strings or action.nargs == "?"
        if optional and not action.required and not isinstance(action, argparse._VersionAction):
            shown = formatter._get_help_string(action) % {"default": action.default}
            assert "default" in shown, f"{name} {action.dest}: the default is not shown"
    parser.format_help()  # every %(default)s formats


def test_a_default_is_shown_in_the_help_text():
    text = " ".join(PARSERS["cellsynth simulate"].format_help().split())
    assert "(default: 10000)" in text and "(default: celltype_annotation)" in text
    assert "reference" in PARSERS["cellsynth fit"].format_help()


@pytest.fixture
def fake_pipeline(monkeypatch, tmp_path):
    """``pipeline.run`` replaced by a recorder; the working directory is ``tmp_path``."""
    calls: list[tuple[config.RunConfig, object]] = []

    def run(cfg, out, *, force=None, command=None):
        calls.append((cfg, out))
        return out / "results.md"

    fake = types.SimpleNamespace(run=run)
    monkeypatch.setitem(sys.modules, "cellsynth.pipeline", fake)
    monkeypatch.setattr(cellsynth, "pipeline", fake, raising=False)
    monkeypatch.chdir(tmp_path)
    return calls


def test_run_without_arguments_is_the_demo_as_before(fake_pipeline, caplog):
    with caplog.at_level("INFO", logger="cellsynth"):
        assert cli.main(["run", "--quiet"]) == 0
    (cfg, out), = fake_pipeline
    assert str(out) == "runs/demo"
    assert config.to_dict(cfg) == config.to_dict(config.load(demo_config_path()))
    assert "qc.min_cells_per_gene=20 (demo preset)" in caplog.text


def test_run_with_data_uses_the_package_defaults_not_the_demo(fake_pipeline, caplog):
    with caplog.at_level("INFO", logger="cellsynth"):
        assert cli.main(["run", "atlas/my.h5ad", "--label-key", "ct", "--quiet",
                         "--set", "cvae.lr=0.01"]) == 0
    (cfg, out), = fake_pipeline
    assert str(out) == "runs/my"
    assert (cfg.dataset.path, cfg.dataset.label_key, cfg.cvae.lr) == ("atlas/my.h5ad", "ct", 0.01)
    defaults = config.RunConfig()
    assert cfg.qc.min_cells_per_gene == defaults.qc.min_cells_per_gene != 20
    assert cfg.generator.n_per_type_eval == defaults.generator.n_per_type_eval
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("settings:"))
    assert line == ('settings: dataset.path="atlas/my.h5ad" (argument), '
                    'dataset.label_key="ct" (argument), cvae.lr=0.01 (--set)')


def test_run_with_data_through_set_also_uses_the_defaults(fake_pipeline):
    assert cli.main(["run", "--quiet", "--set", "dataset.path=data/pbmc.h5ad"]) == 0
    (cfg, out), = fake_pipeline
    assert str(out) == "runs/pbmc" and cfg.dataset.path == "data/pbmc.h5ad"
    assert config.to_dict(cfg) == config.to_dict(config.load(None, ["dataset.path=data/pbmc.h5ad"]))


def test_run_with_a_config_names_the_directory_after_it(fake_pipeline, tmp_path, caplog):
    (tmp_path / "mine.toml").write_text("[cvae]\nmax_epochs = 20\n")
    with caplog.at_level("INFO", logger="cellsynth"):
        assert cli.main(["run", "--quiet", "--config", "mine.toml"]) == 0
    (cfg, out), = fake_pipeline
    assert str(out) == "runs/mine" and cfg.cvae.max_epochs == 20
    assert cfg.qc.min_cells_per_gene == 100  # a config file replaces the demo preset
    assert "cvae.max_epochs=20 (config mine.toml)" in caplog.text


def test_a_bad_setting_stops_run_before_the_pipeline(fake_pipeline, capsys):
    assert cli.main(["run", "x.h5ad", "--quiet", "--set", "cvae.dropout_rate=1.5"]) == 2
    assert not fake_pipeline
    err = capsys.readouterr().err
    assert "cvae.dropout_rate must be in [0, 1), got 1.5" in err


def _show(capsys, *argv: str) -> str:
    assert cli.main(["config", "show", *argv]) == 0
    return capsys.readouterr().out


def test_config_show_is_the_resolved_settings_as_toml(capsys):
    text = _show(capsys, "my.h5ad", "--label-key", "ct", "--set", "cvae.n_latent=8")
    cfg, _ = config_sources.resolve("my.h5ad", "ct", None, ["cvae.n_latent=8"])
    assert tomllib.loads(text) == config.to_dict(cfg)  # the comments are TOML comments
    lines = {line.split(" = ")[0]: line for line in text.splitlines() if " = " in line}
    assert lines["path"].endswith('# argument (default ""); str')
    assert "# --set (default 32); int in [1, inf)" in next(
        v for v in text.splitlines() if v.startswith("n_latent = 8"))
    assert "min_cells_per_gene = 100" in text and "demo preset" not in text
    assert "dropout_rate = 0.1" in text and "float in [0, 1)" in text
    assert "int in [0, 2**63)" in lines["seed"]
    assert 'one of "cvae", "nb", "reference", "scvi"' in lines["model"]
    assert lines["val"].endswith("train + val + test = 1")  # the fractions' rule, on them alone
    assert "train + val" not in lines["heldout_donors"]


def test_config_show_without_data_is_the_demo_preset(capsys):
    text = _show(capsys)
    assert "min_cells_per_gene = 20" in text and "# demo preset (default 100)" in text


def test_config_defaults_prints_every_setting_at_its_default(capsys):
    assert cli.main(["config", "defaults"]) == 0
    text = capsys.readouterr().out
    assert tomllib.loads(text) == config.to_dict(config.RunConfig())
    assert all(line.split("# ")[1].startswith("default;")
               for line in text.splitlines() if " = " in line)


def test_config_show_refuses_a_value_out_of_range(capsys):
    assert cli.main(["config", "show", "--set", "cvae.batch_size=0"]) == 2
    assert "cvae.batch_size must be at least 1, got 0" in capsys.readouterr().err


def test_config_show_maps_the_old_model_name_with_a_warning(capsys):
    assert cli.main(["config", "show", "--set", "generator.model=seed"]) == 0
    out, err = capsys.readouterr()
    assert 'model = "reference"' in out and "renamed 'reference'" in err


def test_a_stopped_command_says_what_a_rerun_does(tmp_path, monkeypatch):
    """Only a run resumes; fit and generate start again; a benchmark reuses what it finished."""
    monkeypatch.chdir(tmp_path)
    def after(*argv):
        return cli._after_stop(cli.build_parser().parse_args(list(argv)))

    assert "rerun the same command to resume" in after("run")
    for argv in (["fit", "a.h5ad", "--label-key", "t", "--out", "m", "--model", "nb"],
                 ["generate", "m", "--n-per-type", "5", "--out", "c.h5ad"]):
        assert "does not resume: the same command starts again" in after(*argv)
        assert "resume)" not in after(*argv)
    # the cvae (the default model) checkpoints its training: the same command resumes it
    (tmp_path / ".m.checkpoint").mkdir()
    assert "resumes from it" in after("fit", "a.h5ad", "--label-key", "t", "--out", "m")
    assert "reuses them" in after("benchmark", "--data", "a.h5ad", "--out", "b")
    assert after("simulate", "--out", "a.h5ad") == "partial outputs removed"  # nothing kept
    # the manifest and the log name the signal, not an internal class (_Terminated)
    import signal

    from cellsynth.runtime import why_stopped

    assert why_stopped(cli_signals.Terminated(signal.SIGTERM)) == "terminated by SIGTERM"
    assert why_stopped(KeyboardInterrupt()) == "interrupted (Ctrl-C)"
    assert why_stopped(ValueError("x")) == "ValueError"


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_terminated_command_says_so_and_leaves_no_partial_file(tmp_path, signum):
    """SIGTERM (a scheduler's cancel or time limit) unwinds as Ctrl-C does: a clear last line,
    the shell's exit code, and no half-written output."""
    import signal
    import subprocess
    import time

    out = tmp_path / "atlas.h5ad"
    # not ignored in the command, as it would be if these tests ran in a script's background
    # job (a signal ignored at start stays ignored)
    sig = getattr(signal, signum)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cellsynth.cli", "simulate", "--cells", "5000000", "--genes",
         "2000", "--out", str(out)], stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(sig, signal.SIG_DFL))
    deadline = time.time() + 60
    while not list(tmp_path.iterdir()) and time.time() < deadline:  # writing has begun
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (130 if sig == signal.SIGINT else 128 + sig), err
    assert ("interrupted" if sig == signal.SIGINT else "terminated by SIGTERM") in err
    assert "partial outputs removed" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_fit_records_the_seed_and_data_it_used_and_refuses_two_seeds(kang_path, tmp_path, capsys):
    def fit(out, *extra):
        return cli.main(["fit", str(kang_path), "--label-key", "cell_type", "--model", "nb",
                         "--out", str(tmp_path / out), "--quiet", *extra])

    def used(out):
        return tomllib.loads((tmp_path / out / "run_config.toml").read_text())

    assert fit("a", "--seed", "3") == 0
    assert used("a")["seed"] == 3 and used("a")["dataset"]["label_key"] == "cell_type"
    assert used("a")["dataset"]["path"] == str(kang_path.resolve())
    assert fit("b", "--set", "seed=4") == 0 and used("b")["seed"] == 4  # the config's seed
    assert fit("c", "--seed", "3", "--set", "seed=4") == 2
    assert "the seed is given twice: --seed 3 and seed = 4" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    # the generator of --set or --config when --model is not given; two different: refused
    assert cli.main(["fit", str(kang_path), "--label-key", "cell_type", "--set",
                     "generator.model='nb'", "--out", str(tmp_path / "d"), "--quiet"]) == 0
    assert used("d")["generator"]["model"] == "nb"
    assert json.loads((tmp_path / "d" / "config.json").read_text())["model"] == "nb"
    assert cli.main(["fit", str(kang_path), "--label-key", "cell_type", "--model", "cvae",
                     "--set", "generator.model='nb'", "--out", str(tmp_path / "e")]) == 2
    assert "the generator is given twice: --model cvae and generator.model = nb" in (
        capsys.readouterr().err)


def test_an_interrupt_lost_where_python_cannot_raise_it_is_raised_again(monkeypatch):
    """A signal's exception raised inside a finaliser or a C extension's callback is printed
    ("Exception ignored in ...") and lost; the command must still stop: the handler raises it
    again while the command runs, and not after it has ended."""
    import signal
    import time

    monkeypatch.setattr(cli_signals, "REPEAT_SIGNAL_SECONDS", 0.2)
    # Ctrl-C as an interactive command gets it: a test run in a background job (`make test &`,
    # nohup) starts with SIGINT ignored, which the command keeps ignored
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    lost = 0
    try:
        with pytest.raises(KeyboardInterrupt), cli_signals.terminations():
            try:
                signal.raise_signal(signal.SIGINT)
            except KeyboardInterrupt:  # what a finaliser does with it
                lost += 1
            deadline = time.time() + 10
            while time.time() < deadline:  # the work going on
                time.sleep(0.01)
        assert lost == 1 and time.time() < deadline
        time.sleep(0.6)  # the command has ended: nothing is raised any more (it would be here)
    finally:
        signal.signal(signal.SIGINT, before)


def test_errors_name_the_options_of_the_command_given(tmp_path, capsys):
    """A path error names the option that gave the path (--cache-dir of download, not --out
    or --config, which it does not have); simulate's chunk size is --chunk-size."""
    afile = tmp_path / "afile"
    afile.write_text("")
    assert cli.main(["download", "E-TEST-1", "--cache-dir", str(afile), "--base-url",
                     "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "File exists" in err and "--cache-dir" in err and "--out" not in err
    assert cli.main(["simulate", "--cells", "10", "--out", str(tmp_path / "s.h5ad"),
                     "--chunk-size", "0"]) == 2
    assert "--chunk-size must be at least 1" in capsys.readouterr().err


def test_a_folder_given_for_a_file_is_called_a_folder(tmp_path, capsys):
    """--config and --request given a folder say so (they said "does not exist")."""
    assert cli.main(["config", "show", "--config", str(tmp_path)]) == 2
    assert f"config file {tmp_path} is a folder" in capsys.readouterr().err
    from cellsynth.errors import DataError
    from cellsynth.pipeline.generate import read_request

    with pytest.raises(DataError, match="is a folder; give the request file in it"):
        read_request(tmp_path, "cell_type")



def test_verbose_shows_debug_lines_for_the_command_only(monkeypatch, capsys, tmp_path):
    """``--verbose`` shows cellsynth's debugging lines (a failed generator's traceback is
    logged at DEBUG for a bug report), on stderr, for that command alone; by default they are
    not shown, and ``--quiet`` and ``--verbose`` are one or the other."""
    import logging

    from cellsynth import cli

    def debug_then_ok(args):  # as a command does: its handlers first
        cli._setup_logging(args.quiet)
        logging.getLogger("cellsynth.test").debug("a debugging line")
        logging.getLogger("cellsynth.test").info("an info line")
        return 0

    monkeypatch.setitem(cli.COMMANDS, "simulate", debug_then_ok)
    out = str(tmp_path / "sim.h5ad")
    level = logging.getLogger("cellsynth").level
    assert cli.main(["simulate", "--out", out, "--verbose"]) == 0
    err = capsys.readouterr().err
    assert "a debugging line" in err and "an info line" in err
    assert logging.getLogger("cellsynth").level == level
    assert cli.main(["simulate", "--out", out]) == 0
    err = capsys.readouterr().err
    assert "a debugging line" not in err and "an info line" in err
    with pytest.raises(SystemExit) as stop:
        cli.main(["simulate", "--out", out, "--quiet", "--verbose"])
    assert stop.value.code == 2
