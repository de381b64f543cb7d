"""Interrupted and repeated work (session 46's sweep): what a killed command leaves behind,
and two commands at once on one output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp


def _dead_pid() -> int:
    """The id of a process that has ended."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout)


def test_the_next_writer_removes_what_a_killed_writer_left(tmp_path: Path) -> None:
    """A SIGKILL while an h5ad, a text file or a model folder was written left its temporary
    file (hundreds of MB for `cellsynth generate`) for ever: each rerun wrote a new one beside
    it. The next writer of the same output removes those of ended processes, and keeps a live
    writer's and a user's own files."""
    from cellsynth.data.store import write_h5ad
    from cellsynth.outputs import _host, temp_beside, write_text

    dead = _dead_pid()
    host = _host()
    out = tmp_path / "cells.h5ad"
    left = tmp_path / f"cells.h5ad.{dead}@{host}.ab12cd34.part"
    left.write_bytes(b"\0" * 1000)
    live_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = tmp_path / f"cells.h5ad.{live_proc.pid}@{host}.zz12cd34.part"
        live.write_bytes(b"\0")
        other_host = tmp_path / f"cells.h5ad.{dead}@elsewhere.ab12cd34.part"
        other_host.write_bytes(b"\0")
        users = tmp_path / "cells.h5ad.backup.part"
        users.write_bytes(b"\0")
        a = ad.AnnData(sp.csr_matrix(np.ones((3, 2), dtype=np.float32)))
        write_h5ad(a, out)
        assert out.is_file() and not left.exists()
        assert live.exists() and other_host.exists() and users.exists()
    finally:
        live_proc.kill()
        live_proc.wait()

    text = tmp_path / "run.log.json"
    (tmp_path / f"run.log.json.{dead}@{host}.qq12cd34.tmp").write_text("half")
    write_text(text, "{}")
    assert not list(tmp_path.glob("run.log.json.*.tmp"))

    model = tmp_path / "model"
    partial = tmp_path / f".model.{dead}@{host}.xy12cd34.partial"
    (partial / "sub").mkdir(parents=True)
    (partial / "weights.safetensors").write_bytes(b"\0" * 100)
    mine = temp_beside(model, ".partial", folder=True)
    assert mine.is_dir() and not partial.exists()


def _counts(path: Path) -> Path:
    """A small labelled h5ad of raw counts."""
    import pandas as pd

    rng = np.random.default_rng(0)
    a = ad.AnnData(sp.csr_matrix(rng.poisson(2.0, (60, 30)).astype(np.float32)),
                   obs=pd.DataFrame({"cell_type": np.repeat(["a", "b", "c"], 20)},
                                    index=[f"c{i}" for i in range(60)]),
                   var=pd.DataFrame(index=[f"g{i}" for i in range(30)]))  # fmt: skip
    a.write_h5ad(path)
    return path


def _held_by_a_live_process(lock: Path) -> subprocess.Popen:
    """A process that runs on, recorded in ``lock`` as :class:`RunLock` records its holder."""
    import json
    import platform

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"pid": proc.pid, "host": platform.node(),
                                "started": "2026-12-07 10:00:00 UTC"}))  # fmt: skip
    return proc


def test_a_second_fit_into_one_model_directory_is_refused_while_the_first_runs(
        tmp_path: Path) -> None:  # fmt: skip
    """Two `cellsynth fit --out M` at once both trained, into one training checkpoint (each
    overwrote the other's, so a kill resumed neither), and each saved M: one's run_config.toml
    could land beside the other's weights. The second is refused at once, naming the first."""
    import pytest

    from cellsynth.config import RunConfig
    from cellsynth.errors import CellsynthError
    from cellsynth.pipeline.fit import fit_model

    data = _counts(tmp_path / "d.h5ad")
    out = tmp_path / "model"
    proc = _held_by_a_live_process(tmp_path / ".model.lock")
    try:
        with pytest.raises(CellsynthError, match=f"in use by another cellsynth fit \\(process "
                                                 f"{proc.pid}"):  # fmt: skip
            fit_model(RunConfig(), data, "cell_type", out, model="nb")
    finally:
        proc.kill()
        proc.wait()
    assert not out.exists()
    # its process gone, the lock is taken over, and a finished fit leaves no lock behind
    fit_model(RunConfig(), data, "cell_type", out, model="nb")
    assert (out / "run_config.toml").is_file() and not (tmp_path / ".model.lock").exists()


def test_a_second_benchmark_into_one_directory_is_refused_while_the_first_runs(
        tmp_path: Path) -> None:  # fmt: skip
    """Two `cellsynth benchmark --out B` at once fitted the same generators into one models/
    and results/: the page's rows could be one command's beside the other's models. The second
    is refused before any fit."""
    from cellsynth.errors import CellsynthError
    from cellsynth.evaluation import run_benchmark

    data = _counts(tmp_path / "d.h5ad")
    out = tmp_path / "bench"
    proc = _held_by_a_live_process(out / "benchmark.lock")
    try:
        import pytest

        with pytest.raises(CellsynthError, match="in use by another cellsynth benchmark"):
            run_benchmark([str(data)], ["nb"], out, label_key="cell_type", reuse=True)
    finally:
        proc.kill()
        proc.wait()
    assert sorted(p.name for p in out.iterdir()) == ["benchmark.lock"]


def test_info_on_a_benchmark_stopped_before_a_data_set_finished(tmp_path: Path) -> None:
    """`cellsynth info B` on a benchmark stopped (or still running) before its first data set
    finished said B was no benchmark directory at all, though it kept a generator's results.
    It is described as a benchmark whose data set is not finished: running, or what a rerun
    reuses."""
    from cellsynth.info import describe

    bench = tmp_path / "bench"
    (bench / "kang" / "results").mkdir(parents=True)
    (bench / "kang" / "results" / "floor.json").write_text("{}")
    (bench / "kang" / "results" / "nb.json").write_text("{}")
    info = describe(bench)
    assert info["kind"] == "benchmark"
    assert "stopped" in info["datasets"]["kang"]["status"]
    assert "reuses the results kept of nb and fits the rest" in info["datasets"]["kang"]["status"]
    proc = _held_by_a_live_process(bench / "benchmark.lock")
    try:
        info = describe(bench)
    finally:
        proc.kill()
        proc.wait()
    assert "running" in info["datasets"]["kang"]["status"] and "running" in info["status"]


def test_info_on_the_model_directory_of_a_stopped_fit_names_its_checkpoint(
        tmp_path: Path) -> None:  # fmt: skip
    """`cellsynth info M` after a stopped `cellsynth fit --out M` said only that M does not
    exist: the training checkpoint beside it, which the same fit resumes, went unmentioned."""
    import pytest

    from cellsynth.errors import CellsynthError
    from cellsynth.info import describe

    (tmp_path / ".model.checkpoint").mkdir()
    (tmp_path / ".model.checkpoint" / "cvae.safetensors").write_bytes(b"\0")
    with pytest.raises(CellsynthError, match=r"stopped `cellsynth fit --out .*model` left its "
                       r"training checkpoint in \.model\.checkpoint .*rerun that fit"):  # fmt: skip
        describe(tmp_path / "model")
    proc = _held_by_a_live_process(tmp_path / ".model.lock")
    try:
        with pytest.raises(CellsynthError, match="a `cellsynth fit` writing it is still running"):
            describe(tmp_path / "model")
    finally:
        proc.kill()
        proc.wait()


def test_a_signal_ignored_at_start_stays_ignored() -> None:
    """`nohup cellsynth run ... &` was stopped by the SIGHUP of a closed terminal or SSH
    session (the command's handler replaced the ignore nohup set: a day's run lost), and a
    script's background `cellsynth run ... &` by the Ctrl-C meant for its foreground job. A
    signal ignored when the command starts stays ignored; one that is not still stops it."""
    import os
    import signal
    import time

    from cellsynth import cli_signals

    before = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM)}
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with cli_signals.terminations():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)  # ignored: nothing is raised
            time.sleep(0.05)
            assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_the_lock_of_a_killed_run_is_stale_once_its_pid_is_another_process(
        tmp_path: Path, caplog) -> None:  # fmt: skip
    """A run killed (SIGKILL, out of memory, the machine restarted) left run.lock naming its pid;
    once that pid was another process's (reused, as pids are after a restart or in a
    container), every rerun was refused as "in use by another cellsynth run" though none ran.
    The lock names which process holds the pid (its start time) and this boot of the machine;
    a lock of another process or boot is taken over with a warning, a live one still refuses."""
    import json
    import logging

    import pytest

    from cellsynth.errors import CellsynthError
    from cellsynth.runtime import RunLock, _process_start

    proc = _held_by_a_live_process(tmp_path / "run.lock")  # its pid runs on
    try:
        held = json.loads((tmp_path / "run.lock").read_text())
        right = {**held, "process_start": _process_start(proc.pid)}
        (tmp_path / "run.lock").write_text(json.dumps(right))
        with pytest.raises(CellsynthError, match=f"in use by another cellsynth run \\(process "
                                                 f"{proc.pid}"):  # fmt: skip
            RunLock(tmp_path).acquire()
        for stale in ({**right, "process_start": "1"}, {**right, "boot": "another-boot"}):
            (tmp_path / "run.lock").write_text(json.dumps(stale))
            lock = RunLock(tmp_path)
            with caplog.at_level(logging.WARNING):
                lock.acquire()
            assert f"taking over the stale lock {tmp_path / 'run.lock'} of process {proc.pid}" \
                in caplog.text
            lock.release()
            assert not (tmp_path / "run.lock").exists()
    finally:
        proc.kill()
        proc.wait()


def test_the_report_of_an_unfinished_run_says_so_first(tmp_path: Path) -> None:
    """A finished run rerun with another generator setting and stopped during its experiments:
    `cellsynth report` wrote a page of the earlier generator's scores beside the new
    generator's settings, its only sign a 'failed' row deep in the stage table. The page now
    says first which stages are not done and what a rerun does, and the command warns."""
    import json

    from cellsynth.report.html import write_report

    run = tmp_path / "run"
    run.mkdir()
    stages = {"data": {"status": "done"}, "generator": {"status": "done"},
              "experiments": {"status": "failed", "reason": "interrupted (Ctrl-C)"},
              "evaluation": {"status": "stale"}}  # fmt: skip
    (run / "manifest.json").write_text(json.dumps({"stages": stages}))
    (run / "config.toml").write_text("")
    page = write_report(run).read_text()
    top = page[:page.index("<nav>")]
    assert "This run is not finished: stage(s) experiments (failed: interrupted (Ctrl-C)), " \
           "evaluation (stale)" in top
    assert "Run the same cellsynth run again" in top
    for entry in stages.values():
        entry.update(status="done", reason=None)
    (run / "manifest.json").write_text(json.dumps({"stages": stages}))
    page = write_report(run).read_text()
    assert "not finished" not in page[:page.index("<nav>")]


def test_a_stopped_fit_names_a_checkpoint_only_when_one_was_kept(tmp_path: Path) -> None:
    """A `cellsynth fit` (cvae) stopped before its first checkpoint said its checkpoint was kept
    and that the same command resumes from it: none was, and the rerun starts again."""
    import argparse

    from cellsynth import cli

    args = argparse.Namespace(command="fit", out=str(tmp_path / "model"), model=None)
    assert "does not resume: the same command starts again" in cli._after_stop(args)
    (tmp_path / ".model.checkpoint").mkdir()
    assert "checkpoint is kept beside --out: the same command resumes" in cli._after_stop(args)


def test_every_table_is_written_through_the_atomic_writer():
    """evaluate's per_type.csv (and a run's other tables) were written in place by to_csv: a
    kill, or a second evaluate into one --out, mid-write left half a table or rows of two."""
    import ast

    src = Path(__file__).resolve().parents[1] / "src" / "cellsynth"
    direct = []
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "to_csv" and node.args):  # to_csv(PATH): in place
                direct.append(f"{path.relative_to(src)}:{node.lineno}")
    assert not direct, f"write tables with outputs.write_csv, not to_csv(path): {direct}"


def test_write_csv_leaves_the_table_whole_when_writing_fails(tmp_path, monkeypatch):
    import pandas as pd

    from cellsynth import outputs
    from cellsynth.errors import CellsynthError

    path = tmp_path / "per_type.csv"
    outputs.write_csv(path, pd.DataFrame({"a": [1, 2]}), index=False)
    assert path.read_text() == "a\n1\n2\n"

    def broken(self, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", broken)
    with pytest.raises(CellsynthError, match="left as it was"):
        outputs.write_csv(path, pd.DataFrame({"a": [3]}), index=False)
    monkeypatch.undo()
    assert path.read_text() == "a\n1\n2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["per_type.csv"]


def test_a_fits_settings_arrive_with_its_model_or_not_at_all(tmp_path: Path, monkeypatch) -> None:
    """`cellsynth fit` put the model folder in place and wrote run_config.toml after it: a kill
    between the two left a model without the settings it was fitted with (and evaluate's
    trained-on checks then quietly skipped). The settings are written into the model's folder
    before it is put in place."""
    import tomllib

    from cellsynth.config import RunConfig
    from cellsynth.models import _model_dir
    from cellsynth.pipeline.fit import fit_model

    data = _counts(tmp_path / "d.h5ad")
    out = tmp_path / "model"
    seen = []
    swap = _model_dir.replace_dir

    def watched(partial, target):
        seen.append(sorted(p.name for p in Path(partial).iterdir()))
        return swap(partial, target)

    monkeypatch.setattr(_model_dir, "replace_dir", watched)
    fit_model(RunConfig(), data, "cell_type", out, model="nb", seed=3)
    assert "run_config.toml" in seen[0]  # in the folder that is renamed into place
    assert tomllib.loads((out / "run_config.toml").read_text())["seed"] == 3


def test_the_training_checkpoint_is_readable_as_a_new_file_is(tmp_path: Path) -> None:
    """safetensors writes its files for their owner only: the training checkpoint (unlike the
    model's files) was mode 600, so a group sharing a fit's folder could not resume it."""
    import os

    import torch

    from cellsynth.models._checkpoint import Checkpoint

    checkpoint = Checkpoint(tmp_path / "ckpt", "key")
    old = os.umask(0o022)
    try:
        checkpoint.write({"w": torch.zeros(3)}, {"epoch": 1})
    finally:
        os.umask(old)
    assert checkpoint.writes == 1
    assert checkpoint.path.stat().st_mode & 0o777 == 0o644
