"""Faults of the commands' logging and last lines found by the sweep of session 49: each test
fails without its fix."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import pytest

from cellsynth import cli, cli_logging, options
from cellsynth import heartbeat as hb
from cellsynth.cli_signals import Terminated
from cellsynth.errors import DataError


def _finished_run(monkeypatch) -> None:
    """``cellsynth run`` with its pipeline replaced by one that logs a line and returns."""
    import cellsynth.pipeline

    def run(cfg, out, **_):
        logging.getLogger("cellsynth.pipeline").info("a stage's line")
        return Path(out) / "results.md"

    monkeypatch.setattr(cellsynth.pipeline, "run", run)


def test_a_command_leaves_logging_as_it_found_it(tmp_path, monkeypatch, capsys):
    """`cli.main` called from Python (a notebook, a Snakemake script) left its console handler
    and the run's run.log open on the cellsynth logger: every later line of the process, of
    another run too, went into the first run's run.log."""
    _finished_run(monkeypatch)
    root = logging.getLogger("cellsynth")
    before = (root.level, list(root.handlers))
    assert cli.main(["run", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert (root.level, list(root.handlers)) == before
    logging.getLogger("cellsynth.api").warning("a later line of other work")
    assert "a later line" not in (tmp_path / "a" / "run.log").read_text()
    assert cli.main(["info", str(tmp_path / "missing")]) == 2  # an error: the same
    assert (root.level, list(root.handlers)) == before


def test_the_heartbeat_keeps_its_clock_when_run_sets_up_its_log(monkeypatch, caplog):
    """`cellsynth run` sets up its handlers twice (before and after it knows the run
    directory); the second removed every handler of the cellsynth logger, the heartbeat's
    clock too, when the heartbeat had attached it in between: the run's log then said
    'still running' every 30 s however many lines the run wrote."""
    monkeypatch.setattr(hb, "LOG_SECONDS", 0.4)
    monkeypatch.setattr(hb, "CHECK_SECONDS", 0.05)
    caplog.set_level(logging.INFO, logger="cellsynth")
    root = logging.getLogger("cellsynth")
    before = list(root.handlers)
    try:
        with options.settings.override(progress=False), hb.heartbeat("cellsynth run"):
            cli._setup_logging(quiet=True)
            deadline = time.monotonic() + 5
            while hb._BEAT.clock is None and time.monotonic() < deadline:
                time.sleep(0.02)
            cli._setup_logging(quiet=True)  # the run directory is known
            for _ in range(12):  # a run logging its lines often enough
                logging.getLogger("cellsynth.pipeline").info("working")
                time.sleep(0.08)
    finally:
        for h in set(root.handlers) - set(before):
            root.removeHandler(h)
    assert not [r for r in caplog.records if "still running" in r.getMessage()]


@pytest.mark.parametrize("quiet", [True, False])
def test_the_console_follows_quiet_and_run_log_keeps_every_line(tmp_path, monkeypatch, capsys,
                                                                quiet):
    _finished_run(monkeypatch)
    assert cli.main(["run", "--out", str(tmp_path), *(["--quiet"] if quiet else [])]) == 0
    assert ("a stage's line" in capsys.readouterr().err) is not quiet
    assert "a stage's line" in (tmp_path / "run.log").read_text()


def _stopping_run(monkeypatch, exc: BaseException) -> None:
    import cellsynth.pipeline

    def run(cfg, out, **_):
        logging.getLogger("cellsynth.pipeline").info("stage data: start")
        raise exc

    monkeypatch.setattr(cellsynth.pipeline, "run", run)


@pytest.mark.parametrize(("exc", "said", "code"), [
    (DataError("the counts are not whole numbers; give raw counts"), "give raw counts", 2),
    (KeyboardInterrupt(), "cellsynth: interrupted; partial outputs removed", 130),
    (Terminated(signal.SIGTERM), "cellsynth: terminated by SIGTERM", 128 + signal.SIGTERM),
])
def test_run_log_says_why_the_run_stopped(tmp_path, monkeypatch, capsys, exc, said, code):
    """A job read through its run.log (a batch job, `nohup ... > /dev/null`) stopped without a
    word there: the error, the interrupt or the signal was said on stderr alone. It is the
    log's last line now, and said once on stderr (a SIGTERM was said twice there)."""
    _stopping_run(monkeypatch, exc)
    assert cli.main(["run", "--out", str(tmp_path)]) == code
    assert said in (tmp_path / "run.log").read_text().splitlines()[-1]
    err = capsys.readouterr().err
    assert err.count(said) == 1 and "Traceback" not in err


def test_run_log_holds_the_traceback_of_an_unexpected_error(tmp_path, monkeypatch):
    _stopping_run(monkeypatch, ZeroDivisionError("a bug"))
    with pytest.raises(ZeroDivisionError):
        cli.main(["run", "--out", str(tmp_path), "--quiet"])
    log = (tmp_path / "run.log").read_text()
    assert "stopped by an unexpected error (ZeroDivisionError: a bug)" in log
    assert "Traceback" in log


@pytest.mark.parametrize(("exc", "said"), [
    (DataError("the counts are not whole numbers; give raw counts"),
     "run stopped: the counts are not whole numbers; give raw counts"),
    (KeyboardInterrupt(), "run stopped: interrupted (Ctrl-C)"),
    (ZeroDivisionError("a bug"), "run stopped: ZeroDivisionError: a bug"),
])
def test_cs_run_log_says_why_the_run_stopped(tmp_path, monkeypatch, exc, said):
    import cellsynth as cs

    _stopping_run(monkeypatch, exc)
    with pytest.raises(type(exc)):
        cs.run(out=tmp_path)
    assert said in (tmp_path / "run.log").read_text()


@pytest.mark.parametrize("argv", [["info", "missing.h5ad"], ["simulate", "--out", ""]])
def test_a_broken_stderr_keeps_the_exit_code(tmp_path, argv):
    """`cellsynth ... 2>&1 | head -0` (or a log reader that has gone): writing the error line
    raised BrokenPipeError inside the error's handler, and a user error exited 1, not 2."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader has gone
    try:
        proc = subprocess.run([sys.executable, "-m", "cellsynth", *argv], cwd=tmp_path,
                              stderr=write, stdout=subprocess.PIPE, timeout=60)
    finally:
        os.close(write)
    assert proc.returncode == 2, proc.stdout


@pytest.fixture
def levels():
    """Set the root's and cellsynth's levels through setLevel (which clears logging's cache of
    who is enabled), and put them back so."""
    loggers = [logging.root, logging.getLogger("cellsynth")]
    saved = [lg.level for lg in loggers]
    yield lambda root, cellsynth=logging.NOTSET: [lg.setLevel(v) for lg, v in
                                                  zip(loggers, (root, cellsynth), strict=True)]
    for lg, level in zip(loggers, saved, strict=True):
        lg.setLevel(level)


def _run_logging(monkeypatch) -> None:
    """cs.run with its pipeline replaced by one that logs an INFO line and a warning."""
    import cellsynth.pipeline

    def run(cfg, out, **_):
        logging.getLogger("cellsynth.pipeline").info("an INFO line of the run")
        logging.getLogger("cellsynth.data.qc").warning("a warning of the run")
        return Path(out) / "results.md"

    monkeypatch.setattr(cellsynth.pipeline, "run", run)


def test_cs_run_shows_warnings_in_a_session_without_logging(tmp_path, monkeypatch, capsys,
                                                            levels):
    """A notebook that set up no logging sees cellsynth's warnings through logging's last
    resort; during cs.run the run.log's handler counted as one found, and every warning of
    the run (a type QC removed whole, no mitochondrial genes) went into run.log alone."""
    import cellsynth as cs

    _run_logging(monkeypatch)
    monkeypatch.setattr(logging.root, "handlers", [])  # pytest's own capture: none
    levels(logging.WARNING)
    cs.run(out=tmp_path)
    err = capsys.readouterr().err
    assert "a warning of the run" in err and "an INFO line" not in err
    log = (tmp_path / "run.log").read_text()
    assert "a warning of the run" in log and "an INFO line of the run" in log


@pytest.mark.parametrize("cellsynth_level", [logging.NOTSET, logging.ERROR])
def test_cs_run_leaves_the_callers_console_at_its_level(tmp_path, monkeypatch, levels,
                                                        cellsynth_level):
    """`logging.basicConfig()` (a root handler, WARNING): cs.run lowered the cellsynth logger to
    INFO for its run.log, and every INFO line of the run reached the caller's console (a
    root handler sees every record propagated to it); a cellsynth logger set to ERROR (as
    cs.settings' message suggests) showed the run's warnings too."""
    import io

    import cellsynth as cs

    _run_logging(monkeypatch)
    stream = io.StringIO()
    console = logging.StreamHandler(stream)
    monkeypatch.setattr(logging.root, "handlers", [console])
    levels(logging.WARNING, cellsynth_level)
    lg = logging.getLogger("cellsynth")
    cs.run(out=tmp_path)
    assert "an INFO line" not in stream.getvalue()
    assert ("a warning of the run" in stream.getvalue()) is (cellsynth_level == logging.NOTSET)
    assert "an INFO line of the run" in (tmp_path / "run.log").read_text()
    assert (lg.level, lg.propagate, lg.handlers, console.filters) == (cellsynth_level, True,
                                                                       [], [])


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_under_stdout_is_not_said_as_the_outputs_failing(tmp_path, monkeypatch,
                                                                      capsys):
    """`cellsynth simulate ... > log.txt` with log.txt on a full disk: the atlas was written
    whole, then its path could not be printed, and the command said 'disk full while writing
    the output; free space or choose another --out (finished stages are kept)'."""
    with open("/dev/full", "w") as full:
        monkeypatch.setattr("sys.stdout", full)
        code = cli.main(["simulate", "--cells", "60", "--genes", "40", "--types", "2",
                         "--out", str(tmp_path / "a.h5ad"), "--quiet"])
        monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 2 and "the standard output could not be written" in err
    assert "--out" not in err and "stages" not in err
    assert (tmp_path / "a.h5ad").is_file()


@pytest.mark.parametrize(("argv", "said"), [
    (["fit", "a.h5ad", "--label-key", "t", "--model", "nb", "--out", "m"],
     "disk full while writing --out m; free space or choose another --out"),
    (["run", "--out", "r"], "free space or choose another --out (finished stages are kept)"),
])
def test_a_full_disk_says_what_the_command_keeps(tmp_path, monkeypatch, capsys, argv, said):
    """A full disk said '(finished stages are kept)' for every command: a fit, a generate or
    an evaluate has no stages and keeps nothing; and 'the output' for a file without a name."""
    import errno

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(cli.COMMANDS, argv[0], full)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert said in err and ("stages" in err) is (argv[0] == "run")


def _atlas_with_duplicate(tmp_path, axis: str) -> Path:
    import warnings

    import anndata as ad
    import numpy as np
    import pandas as pd

    dup = {"obs": [f"c{i % 5}" for i in range(10)], "var": [f"g{i % 3}" for i in range(6)]}
    names = {k: dup[k] if k == axis else [f"{k}{i}" for i in range(len(v))]
             for k, v in dup.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = ad.AnnData(np.ones((10, 6), dtype=np.float32),
                       obs=pd.DataFrame({"cell_type": ["a", "b"] * 5},
                                        index=names["obs"]),
                       var=pd.DataFrame(index=names["var"]))
        a.write_h5ad(tmp_path / "dup.h5ad")
    return tmp_path / "dup.h5ad"


@pytest.mark.parametrize("axis", ["obs", "var"])
def test_duplicate_names_are_said_once_without_anndatas_raw_warning(tmp_path, capsys, axis):
    """A file with duplicate cell (gene) names: anndata's raw UserWarning, a path into
    site-packages and its source line, came before cellsynth's own one-line error that
    names them and the fix, in every command (info, run, fit, evaluate, benchmark) and in
    cs.read."""
    import warnings

    path = _atlas_with_duplicate(tmp_path, axis)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main(["info", str(path)]) == 2
    assert "duplicate" in capsys.readouterr().err
    assert not [w for w in caught if "names are not unique" in str(w.message)]


def test_each_attempt_of_a_run_dates_its_lines_in_run_log(tmp_path, monkeypatch, capsys):
    """run.log is appended to by each attempt of a run (a resume the next day), and its lines
    say the time alone: a log read later could not tell its attempts, nor their days, apart.
    Each attempt's first line there gives its date, command, version and process."""
    import datetime

    import cellsynth as cs

    _finished_run(monkeypatch)
    for _ in range(2):
        assert cli.main(["run", "--out", str(tmp_path), "--quiet"]) == 0
    cs.run(out=tmp_path)
    today = datetime.date.today().isoformat()
    starts = [line for line in (tmp_path / "run.log").read_text().splitlines()
              if f"started {today}" in line]
    assert len(starts) == 3 and all("pid " in line for line in starts)
    assert [line.split(": ", 2)[-1].split(" (cellsynth")[0] for line in starts] == [
        f"cellsynth run --out {tmp_path} --quiet"] * 2 + ["cs.run"]
    assert "started" not in capsys.readouterr().err  # the file's line alone


def test_the_ranks_of_a_distributed_fit_log_through_this_process(caplog, capfd):
    """`cellsynth run --set cvae.distributed=true --quiet`: torchrun's ranks wrote their INFO
    lines (epochs, the model saved) straight to the inherited stderr, past --quiet, and none
    of them reached run.log. Their stderr is now logged by the run (the console at its level,
    run.log), another library's line by a cellsynth logger, any other line as a warning."""
    import sys

    from cellsynth.pipeline.models import run_process_group

    lines = ["12:00:01 rank 0 INFO cellsynth.models.distributed: CVAE: best epoch 3 of 4",
             "12:00:02 rank 1 WARNING torch.distributed: a store timed out",
             "Traceback (most recent call last):"]
    script = f"import sys; sys.stderr.write({chr(10).join(lines) + chr(10)!r})"
    caplog.set_level(logging.INFO, logger="cellsynth")
    assert run_process_group([sys.executable, "-c", script], relay=True) == 0
    got = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert got == [
        ("cellsynth.models.distributed", "INFO", "rank 0: CVAE: best epoch 3 of 4"),
        ("cellsynth.models.distributed", "WARNING",
         "torch.distributed: rank 1: a store timed out"),
        ("cellsynth.pipeline.models", "WARNING", "torchrun: Traceback (most recent call last):")]
    assert "best epoch" not in capfd.readouterr().err  # not written past the logging


def test_info_does_not_call_counts_in_x_normalised_beside_a_counts_layer(tmp_path, capsys):
    """`cellsynth info` on an h5ad whose X and layers['counts'] hold the same raw counts (a
    common way to keep them) said 'X: normalised values': cellsynth reads the layer, but X
    is counts too."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    x = np.random.default_rng(0).poisson(2, (20, 8)).astype(np.float32)
    a = ad.AnnData(x, obs=pd.DataFrame({"cell_type": ["a", "b"] * 10},
                                       index=[f"c{i}" for i in range(20)]),
                   var=pd.DataFrame(index=[f"g{i}" for i in range(8)]))
    a.layers["counts"] = x.copy()
    a.write_h5ad(tmp_path / "both.h5ad")
    assert cli.main(["info", str(tmp_path / "both.h5ad")]) == 0
    out = capsys.readouterr().out
    assert "X: raw counts too (cellsynth reads those in layers/counts)" in out
    assert "normalised" not in out


def test_a_verbosity_setting_says_how_to_see_more_as_well_as_less():
    """`cs.settings.verbosity = 3`, as in scanpy, to see what a long fit is doing in a script:
    the error said only how to hide cellsynth's messages, while a session without a logging
    set-up shows none but its warnings."""
    import cellsynth as cs

    with pytest.raises(AttributeError) as err:
        cs.settings.verbosity = 3
    assert "logging.basicConfig(level=logging.INFO) shows its progress lines" in str(err.value)
    assert "setLevel(logging.ERROR) hides its warnings" in str(err.value)


def test_run_log_takes_any_name_in_any_locale(tmp_path):
    """Under a locale that is not UTF-8 (ASCII, Latin-1: a cluster's node), run.log was
    written in its encoding: every line naming a cell type such as 'γδ T cells' became a
    '--- Logging error ---' traceback on stderr and was lost from the log."""
    import os
    import subprocess
    import sys

    script = (
        "import logging, sys\n"
        "from pathlib import Path\n"
        "import cellsynth.pipeline\n"
        "def run(cfg, out, **_):\n"
        "    logging.getLogger('cellsynth.explain.shap').info('SHAP for %s', 'γδ T cells')\n"
        "    logging.getLogger('cellsynth.explain.shap').info('an argument: %s', '\\udcce')\n"
        "    return Path(out) / 'results.md'\n"
        "cellsynth.pipeline.run = run\n"
        "from cellsynth.cli import main\n"
        "sys.exit(main(['run', '--out', sys.argv[1], '--quiet']))\n")
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    (tmp_path / "run_it.py").write_text(script, encoding="utf-8")  # source files are UTF-8
    proc = subprocess.run([sys.executable, str(tmp_path / "run_it.py"), str(tmp_path / "r")],
                          env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert b"Logging error" not in proc.stderr
    log = (tmp_path / "r" / "run.log").read_text(encoding="utf-8")
    assert "SHAP for γδ T cells" in log and "an argument: \\udcce" in log


def test_output_in_a_locale_that_is_not_utf8_is_escaped_not_a_traceback(tmp_path, monkeypatch):
    """Under an ASCII (or Latin-1) locale, `cellsynth evaluate` and `run` wrote their outputs,
    then printing the verdict (its '±') or a type named 'γδ T cells' ended in a
    UnicodeEncodeError traceback, exit 1."""
    import io

    import anndata as ad
    import numpy as np
    import pandas as pd

    a = ad.AnnData(np.ones((4, 3), dtype=np.float32),
                   obs=pd.DataFrame({"típo γδ": ["a", "b", "a", "b"]},
                                    index=[f"c{i}" for i in range(4)]),
                   var=pd.DataFrame(index=["g0", "g1", "g2"]))
    a.write_h5ad(tmp_path / "a.h5ad")
    raw = io.BytesIO()
    ascii_out = io.TextIOWrapper(raw, encoding="ascii")
    monkeypatch.setattr("sys.stdout", ascii_out)
    assert cli.main(["info", str(tmp_path / "a.h5ad")]) == 0
    cli_logging.show("verdict: close (0.52 ± 0.05)")
    monkeypatch.undo()
    ascii_out.flush()
    out = raw.getvalue().decode("ascii")
    assert "t\\xedpo \\u03b3\\u03b4" in out and "0.52 \\xb1 0.05" in out


def test_an_argument_the_locale_cannot_read_is_refused_in_one_line(tmp_path):
    """Under an ASCII locale, `--set explain.cell_type="B cells γδ"` reached cellsynth as
    surrogate escapes: a name that matched nothing, and the run crashed writing its
    config.toml with a UnicodeEncodeError traceback."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "cellsynth", "run", "--out", str(tmp_path / "r"), "--set",
         'explain.cell_type="B cells γδ"'.encode(), "--quiet"], env=env, capture_output=True,
        timeout=300)
    err = proc.stderr.decode("ascii", "backslashreplace")
    assert proc.returncode == 2, err
    assert "cannot read; run cellsynth under a UTF-8 locale" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
