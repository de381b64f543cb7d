"""Runs that resume: finished stages are skipped, changed or forced ones redone, a killed run
restarts from its last finished stage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cellsynth.cli import main
from test_pipeline import FAST

TINY = [*FAST, "dataset.demo_cells=600", "dataset.demo_genes=200", "qc.min_genes_per_cell=20"]


def _args(out, *extra):
    args = ["run", "--out", str(out), "--quiet"]
    for s in [*TINY, *extra]:
        args += ["--set", s]
    return args


def _stages(out):
    return json.loads((out / "manifest.json").read_text())["stages"]


def test_second_run_skips_finished_stages(tmp_path, caplog):
    assert main(_args(tmp_path)) == 0
    first = _stages(tmp_path)
    summary = (tmp_path / "metrics" / "summary.json").read_text()
    caplog.clear()
    assert main(_args(tmp_path)) == 0
    assert caplog.text.count("done before with the same settings, skipped") == 7
    assert _stages(tmp_path) == first  # nothing re-ran
    assert (tmp_path / "metrics" / "summary.json").read_text() == summary

    # a classifier setting redoes what uses the classifier, not data, features or the generator
    caplog.clear()
    assert main(_args(tmp_path, "classifier.max_depth=2")) == 0
    again = _stages(tmp_path)
    for stage in ("data", "features", "generator"):
        assert again[stage] == first[stage], stage
    for stage in ("classifier", "experiments", "explain"):
        assert again[stage]["config_hash"] != first[stage]["config_hash"], stage
    assert "stage classifier: start" in caplog.text

    # --force redoes a stage whose settings did not change
    caplog.clear()
    assert main([*_args(tmp_path, "classifier.max_depth=2"), "--force", "explain"]) == 0
    assert "stage explain: start" in caplog.text and "stage generator: start" not in caplog.text


def test_unknown_force_stage(tmp_path, capsys):
    assert main([*_args(tmp_path), "--force", "training"]) == 2
    assert "unknown stage" in capsys.readouterr().err


@pytest.mark.slow
def test_killed_during_training_resumes_from_last_finished_stage(tmp_path):
    long_training = ["seed_vae.max_epochs=100000", "seed_vae.patience=100000"]
    proc = subprocess.Popen([sys.executable, "-m", "cellsynth.cli", *_args(tmp_path, *long_training)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            m = tmp_path / "manifest.json"
            if m.is_file() and _stages(tmp_path).get("generator", {}).get("status") == "running":
                break
            time.sleep(0.5)
        else:
            pytest.fail("the run never reached the generator stage")
        time.sleep(2)  # mid-training
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = _stages(tmp_path)
    assert before["generator"]["status"] == "running"
    assert not (tmp_path / "results.md").exists()
    assert main(_args(tmp_path)) == 0  # back to the normal number of epochs
    after = _stages(tmp_path)
    for stage in ("data", "features", "classifier"):
        assert after[stage] == before[stage], stage  # not redone
    assert after["generator"]["status"] == "done"
    assert (tmp_path / "results.md").is_file()
