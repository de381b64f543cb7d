"""Progress bars and timing: bars on stderr only for a terminal and without --quiet, and a timed
line with peak memory for every pipeline stage in run.log."""

from __future__ import annotations

import json
import re
import sys

import pytest

from cellsynth.cli import main
from test_pipeline import FAST

TINY = [*FAST, "dataset.demo_cells=600", "dataset.demo_genes=200", "qc.min_genes_per_cell=20",
        "report.fidelity=false"]
BAR = re.compile(r"\d+%\|")  # tqdm's "  40%|####  |"


def _run_args(out, *flags):
    args = ["run", "--out", str(out), *flags]
    for s in TINY:
        args += ["--set", s]
    return args


def _terminal(monkeypatch) -> None:
    """stderr (as captured now) claims to be a terminal, as in an interactive shell; called in the
    test body, where capsys's stream is in place."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)


@pytest.fixture(scope="module")
def quiet_run(tmp_path_factory):
    """A tiny run with --quiet whose stderr claims to be a terminal; (run dir, stderr)."""
    out = tmp_path_factory.mktemp("quiet")
    capture = _Capture()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(sys, "stderr", capture)
        assert main(_run_args(out, "--quiet")) == 0
    return out, capture.getvalue()


class _Capture:
    """A stderr stand-in that says it is a terminal."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True

    def getvalue(self) -> str:
        return "".join(self.parts)


def test_quiet_prints_no_progress(quiet_run):
    _, err = quiet_run
    assert not BAR.search(err) and "\r" not in err, err[-2000:]
    assert "epoch" not in err and "round" not in err


def test_every_stage_logs_time_and_peak_memory(quiet_run):
    out, _ = quiet_run
    log = (out / "run.log").read_text()  # the file gets every INFO line, --quiet or not
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert set(stages) >= {"data", "features", "classifier", "generator", "experiments",
                           "explain", "evaluation"}  # fmt: skip
    for name, entry in stages.items():
        assert entry["seconds"] >= 0 and entry["peak_rss_mb"] > 0, name
        assert re.search(rf"stage {name}: done in [\d.]+ s \(peak RSS \d+ MB\)", log), name


def test_bars_for_training_on_a_terminal(tmp_path, monkeypatch, capsys):
    _terminal(monkeypatch)
    assert main(_run_args(tmp_path)) == 0
    err = capsys.readouterr().err
    assert re.search(r"CVAE: +100%\|.*2/2", err), err[-3000:]  # the generator's epochs
    assert re.search(r"xgboost: +\d+%\|", err)  # boosting rounds
    capsys.readouterr()
    syn = tmp_path / "syn.h5ad"
    assert main(["generate", str(tmp_path / "generator"), "--n-per-type", "50",
                 "--out", str(syn)]) == 0  # fmt: skip
    assert re.search(r"CVAE sample: +100%\|", capsys.readouterr().err)
    assert main(["generate", str(tmp_path / "generator"), "--n-per-type", "50",
                 "--out", str(syn), "--quiet"]) == 0  # fmt: skip
    assert not BAR.search(capsys.readouterr().err)


def test_no_bars_when_stderr_is_not_a_terminal(tmp_path, quiet_run, capsys):
    out, _ = quiet_run
    syn = tmp_path / "syn.h5ad"
    assert main(["generate", str(out / "generator"), "--n-per-type", "50", "--out", str(syn)]) == 0
    assert not BAR.search(capsys.readouterr().err)  # log lines only
