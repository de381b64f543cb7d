"""Interrupted, resumed and repeated runs under misuse (session 49's resume sweep)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from cellsynth.cli import main
from test_pipeline import FAST
from test_resume import interrupt_after

# a run of the demo atlas in a few seconds; its training writes a checkpoint every epoch
TINY = [*FAST, "dataset.demo_cells=400", "dataset.demo_genes=120", "qc.min_genes_per_cell=20",
        "report.fidelity=false", "cvae.max_epochs=6", "cvae.patience=6", "cvae.select=elbo",
        "cvae.checkpoint_seconds=0"]  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _no_html_report(monkeypatch) -> None:
    """The report page (seconds a run, tested elsewhere) is not what resuming is about."""
    from cellsynth.pipeline import experiment

    monkeypatch.setattr(experiment, "write_html_report", lambda out: out / "report.html")


def _args(out: Path, *extra: str) -> list[str]:
    args = ["run", "--out", str(out), "--quiet", *extra]
    for s in TINY:
        args += ["--set", s]
    return args


def _stages(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())["stages"]


@pytest.mark.parametrize(("forced", "first"), [("generator", False), ("data", False),
                                               ("generator", True)])  # fmt: skip
def test_a_forced_run_stopped_in_training_goes_on_with_the_same_command(
        tmp_path, monkeypatch, caplog, capsys, forced, first) -> None:  # fmt: skip
    # `cellsynth run ... --force generator` stopped during training said "rerun the same
    # command to resume"; the same command deleted the training checkpoint (and with --force
    # data redid the data and PCA stages) and trained again from epoch 0: hours lost (also
    # for a script whose command always forces, stopped in its first run into a directory)
    if not first:
        assert main(_args(tmp_path)) == 0
    with monkeypatch.context() as patch:
        interrupt_after(patch, 3, KeyboardInterrupt)
        assert main(_args(tmp_path, "--force", forced)) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err
    stopped = _stages(tmp_path)
    assert stopped["generator"]["status"] == "failed"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cellsynth"):
        assert main(_args(tmp_path, "--force", forced)) == 0  # the same command: it goes on
    assert "resuming CVAE training from epoch 3 " in caplog.text
    assert "going on with the run stopped" in caplog.text
    after = _stages(tmp_path)
    for stage in ("data", "features", "classifier"):
        assert after[stage] == stopped[stage], stage  # not redone again
    history = json.loads((tmp_path / "generator" / "history.json").read_text())
    assert history["resumed_from"] == 3 and history["epochs"] == 6
    assert "forced" not in json.loads((tmp_path / "manifest.json").read_text())
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cellsynth"):  # that run ended: --force is new
        assert main(_args(tmp_path, "--force", forced)) == 0
    assert f"stage {forced}: --force; running again" in caplog.text
    assert "resuming CVAE training" not in caplog.text
    assert "going on with the run stopped" not in caplog.text


@pytest.mark.parametrize(("edit", "setting", "kept"), [
    ({"stages": {"data": {"input": "atlas.h5ad"}}}, "qc.iqr_factor=2.0", ()),
    ({"config": {"dataset": 5}}, "classifier.max_depth=2", ("data", "features", "generator")),
    ({"stages": {"data": {"outputs": "data/qc.json", "sizes": [1], "status": 1}}},
     "qc.iqr_factor=2.0", ()),
])  # fmt: skip
def test_a_hand_edited_manifest_field_of_another_type_is_no_traceback(tmp_path, edit, setting,
                                                                      kept) -> None:  # fmt: skip
    # a manifest.json edited by hand (a string or a number where a record goes) raised
    # AttributeError ('str' object has no attribute 'get') once a stage's key changed
    from cellsynth import config
    from cellsynth.resume import STAGES, ResumePlan
    from cellsynth.runtime import Manifest

    inputs = {"data": {"path": "/x.h5ad", "size": 1, "mtime_ns": 1, "sha256": "0" * 64}}
    keys = ResumePlan(Manifest(tmp_path / "none.json"), config.load(), set(), inputs).hashes
    data = {"stages": {name: {"status": "done", "config_hash": keys[name]} for name in STAGES},
            "config": json.loads(json.dumps(config.to_dict(config.load())))}
    for key, value in edit.items():
        for name, fields in (value.items() if key == "stages" else [(None, value)]):
            (data["stages"][name] if name else data[key]).update(fields)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    plan = ResumePlan(Manifest(tmp_path / "manifest.json"), config.load(overrides=[setting]),
                      set(), inputs)  # fmt: skip
    assert [s for s in STAGES if plan.runs(s)] == [s for s in STAGES if s not in kept]


def test_files_put_beside_a_run_while_a_stage_ran_are_never_its_outputs(tmp_path) -> None:
    # notes, a figure or `cellsynth report RUN`'s pages saved into the run directory while a
    # stage ran (the generator trains for hours) were recorded as that stage's outputs: the
    # next rerun of the stage deleted them ('removed notes.txt, which its earlier run wrote'),
    # and a report page rewritten since retrained the generator ('its output report.html
    # changed')
    from cellsynth.runtime import Manifest, changed_outputs

    manifest = Manifest(tmp_path / "manifest.json")
    mine = [tmp_path / "notes.txt", tmp_path / "analysis" / "fig.png", tmp_path / "report.html"]
    with manifest.stage("generator"):
        (tmp_path / "generator").mkdir()
        (tmp_path / "generator" / "weights.bin").write_text("w")
        for path in mine:
            path.parent.mkdir(exist_ok=True)
            path.write_text("the user's")
    entry = manifest.data["stages"]["generator"]
    assert entry["outputs"] == ["generator/weights.bin"]
    (tmp_path / "report.html").write_text("rewritten by the run's end")
    assert changed_outputs(tmp_path, entry) == []
    # a manifest an earlier version wrote, which claimed them: still never removed nor checked
    entry["outputs"] += ["notes.txt", "analysis/fig.png", "report.html"]
    assert changed_outputs(tmp_path, entry) == []
    with manifest.stage("generator"):
        (tmp_path / "generator" / "weights.bin").write_text("again")
    assert all(path.is_file() for path in mine)


@pytest.mark.parametrize("stop", ["ctrl-c", "kill"])
def test_a_stage_stopped_once_still_removes_what_its_earlier_settings_wrote(tmp_path,
                                                                            stop) -> None:
    # explain.type changed from A to B, the run stopped (Ctrl-C, or killed) during the explain
    # stage: its entry forgot the files its earlier run wrote, so the rerun kept shap_A.png
    # beside shap_B.png and the report showed both as this run's
    from cellsynth.runtime import Manifest

    path, explain = tmp_path / "manifest.json", tmp_path / "explain"
    explain.mkdir()
    with Manifest(path).stage("explain"):
        (explain / "shap_A.png").write_text("A")
    with pytest.raises(KeyboardInterrupt), Manifest(path).stage("explain"):
        (explain / "shap_B.png").write_text("B, cut short")
        killed = path.read_text()  # what a SIGKILL leaves: the stage 'running'
        raise KeyboardInterrupt
    if stop == "kill":
        path.write_text(killed)
    with Manifest(path).stage("explain"):
        (explain / "shap_C.png").write_text("C")
    left = sorted(p.name for p in explain.iterdir())
    # a kill leaves no word of what the stopped stage wrote; its earlier run's files go
    assert left == (["shap_C.png"] if stop == "ctrl-c" else ["shap_B.png", "shap_C.png"])


def test_cs_run_of_an_anndata_into_a_directory_a_run_holds_changes_nothing_there(
        tmp_path) -> None:  # fmt: skip
    # a second `cs.run(adata, out=RUN)` (another notebook) while a run went on in RUN replaced
    # RUN/input.h5ad, the file the first run reads, and wrote its lines into that run's
    # run.log, before the run's lock refused it
    import platform
    import subprocess
    import sys

    import anndata as ad
    import numpy as np
    import pandas as pd

    import cellsynth as cs
    from cellsynth.errors import CellsynthError

    run = tmp_path / "run"
    run.mkdir()
    (run / "input.h5ad").write_bytes(b"the first run's input")
    (run / "run.log").write_text("the first run's log\n")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (run / "run.lock").write_text(json.dumps({"pid": proc.pid, "host": platform.node(),
                                              "started": "now"}))  # fmt: skip
    cells = ad.AnnData(np.ones((6, 3), np.float32), obs=pd.DataFrame(
        {"cell_type": list("aabbcc")}, index=[f"c{i}" for i in range(6)]))
    try:
        with pytest.raises(CellsynthError, match="in use by another cellsynth run"):
            cs.run(cells, label_key="cell_type", out=run)
    finally:
        proc.kill()
        proc.wait()
    assert (run / "input.h5ad").read_bytes() == b"the first run's input"
    assert (run / "run.log").read_text() == "the first run's log\n"


def test_a_first_run_killed_while_writing_its_first_files_can_be_run_again(tmp_path) -> None:
    # a run killed (SIGKILL, a crash) while it took its lock or wrote its first config.toml
    # left run.lock.PID.tmp or config.toml.PID@HOST.RANDOM.tmp: every rerun into the directory
    # was refused as 'a non-empty directory that is not a cellsynth run directory'
    from cellsynth.config import RunConfig
    from cellsynth.errors import CellsynthError
    from cellsynth.outputs import _host, check_out

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.log").write_text("")
    (run / "run.lock.4194000.tmp").write_text("{}")
    (run / f"config.toml.4194000@{_host()}.k2_9xq0a.tmp").write_text("seed = ")
    check_out(run, RunConfig())  # the directory of a run to start again
    (run / "config.toml.bak").write_text("the user's")  # a file of the user's still refused
    with pytest.raises(CellsynthError, match="not a cellsynth run directory"):
        check_out(run, RunConfig())


def test_what_a_kill_left_among_the_checkpoints_does_not_stop_the_save(tmp_path, monkeypatch):
    """A run killed while it wrote a training checkpoint can leave a file in
    ``generator/checkpoint/`` that the fit's own clean-up does not remove; the resumed run then
    trained to the end and was refused its save ('generator is a non-empty directory that is
    not a saved model (it holds checkpoint)'). The folder goes once the fit is done."""
    from cellsynth.pipeline import models

    fit = models.fit_generator

    def fit_leaving_a_file(ctx, *args, **kwargs):
        out = fit(ctx, *args, **kwargs)
        folder = ctx.path("generator", "checkpoint")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cvae.safetensors.cut-short").write_bytes(b"\\0" * 16)
        return out

    monkeypatch.setattr(models, "fit_generator", fit_leaving_a_file)
    out = tmp_path / "run"
    assert main(_args(out)) == 0
    assert (out / "generator" / "config.json").is_file()
    assert not (out / "generator" / "checkpoint").exists()
