"""`cellsynth run` under misuse (session 45's sweep): a finished stage's file damaged in place
(same size, so the resume check cannot see it) is a one-line error naming --force, not a
traceback or the advice meant for a user's own file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

CLI = [sys.executable, "-m", "cellsynth.cli"]
TINY = ["--set", "cvae.max_epochs=1", "--set", "cvae.min_steps=0", "--set", "cvae.n_hidden=[32]",
        "--set", "report.umap=false", "--set", "report.fidelity=false", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny(kang_path: Path, tmp_path_factory) -> Path:
    a = ad.read_h5ad(kang_path)
    rows = np.sort(np.random.default_rng(0).choice(a.n_obs, 400, replace=False))
    path = tmp_path_factory.mktemp("data") / "tiny.h5ad"
    a[rows].copy().write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def finished_run(tiny: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    done = subprocess.run([*CLI, "run", str(tiny), "--out", str(out), *TINY],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "run", *args, *TINY], capture_output=True, text=True)


@pytest.mark.parametrize(("damaged", "stage", "force"), [
    ("features/pca.safetensors", "features", "classifier"),
    ("data/preprocessed.h5ad", "data", "classifier"),
    ("data/qc.json", "data", "features"),
    ("metrics/a_summary.json", "classifier", None),
])  # fmt: skip
def test_a_damaged_output_of_a_finished_stage_names_force(finished_run: Path, tiny: Path,
                                                          tmp_path: Path, damaged: str,
                                                          stage: str, force) -> None:  # fmt: skip
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    path = out / damaged
    with open(path, "r+b") as fh:  # the same size: only reading it can tell
        fh.write(b"\0" * min(100, path.stat().st_size))
    done = _run(str(tiny), "--out", str(out), *(["--force", force] if force else []))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"rerun with --force {stage}" in done.stderr
    assert "convert it with anndata" not in done.stderr


def test_a_misspelt_covariate_on_a_resumed_run_is_refused_before_any_stage(
        finished_run: Path, tiny: Path, tmp_path: Path) -> None:  # fmt: skip
    """The data stage skipped: the covariates are still checked first, so the classifier is not
    retrained and the trained generator not marked failed by a typo."""
    import json
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = json.loads((out / "manifest.json").read_text())["stages"]
    done = _run(str(tiny), "--out", str(out), "--set", 'cvae.covariates=["conditon"]',
                "--set", "classifier.max_depth=3")  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "did you mean 'condition'" in done.stderr
    after = json.loads((out / "manifest.json").read_text())["stages"]
    assert after == before


def test_a_missing_data_file_leaves_the_finished_stages_done(finished_run: Path,
                                                             tmp_path: Path) -> None:  # fmt: skip
    """A data file moved away (an unmounted disk): refused before any stage is planned, so
    the run's finished stages are not all marked stale and redone once the file is back."""
    import json
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = json.loads((out / "manifest.json").read_text())["stages"]
    done = _run(str(tmp_path / "moved.h5ad"), "--out", str(out))
    assert done.returncode == 2, done.stderr
    assert "moved.h5ad does not exist" in done.stderr
    assert json.loads((out / "manifest.json").read_text())["stages"] == before


def test_a_generator_device_that_is_not_there_is_refused_before_any_stage(
        finished_run: Path, tiny: Path, tmp_path: Path) -> None:  # fmt: skip
    """cvae.device = "cuda" without CUDA: said before any stage, as classifier.device is, so
    the generator trained before is not marked failed (and trained again on going back)."""
    import json
    import shutil

    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = json.loads((out / "manifest.json").read_text())["stages"]
    done = _run(str(tiny), "--out", str(out), "--set", "cvae.device=cuda")
    assert done.returncode == 2, done.stderr
    assert "set cvae.device = 'auto' or 'cpu'" in done.stderr
    assert json.loads((out / "manifest.json").read_text())["stages"] == before


def test_a_folder_with_another_programs_manifest_json_is_not_a_run(tiny: Path,
                                                                  tmp_path: Path) -> None:  # fmt: skip
    """A web app's or browser extension's manifest.json (a JSON object without 'stages') does
    not make its folder a run directory: the run is refused and the file kept as it was."""
    from cellsynth.runtime import Manifest

    out = tmp_path / "webapp"
    out.mkdir()
    own = '{"name": "my app", "version": "1.0"}'
    (out / "manifest.json").write_text(own)
    (out / "index.html").write_text("<html></html>")
    done = _run(str(tiny), "--out", str(out))
    assert done.returncode == 2, done.stderr
    assert "not a cellsynth run directory" in done.stderr
    assert (out / "manifest.json").read_text() == own
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "manifest.json"]
    alone = tmp_path / "alone" / "manifest.json"  # read as a run's: set aside, not overwritten
    alone.parent.mkdir()
    alone.write_text(own)
    assert Manifest(alone).data == {"stages": {}}
    assert (alone.parent / "manifest.json.corrupt").read_text() == own


def test_out_with_a_quoted_tilde_is_the_home_folder_and_an_empty_out_is_refused(
        tiny: Path, tmp_path: Path) -> None:  # fmt: skip
    """`--out '~/runs/x'` (a tilde the shell left alone): every file under the home folder, none
    in a folder named ~ (run.log and the manifest went there, the rest to the home's, then a
    traceback); `--out ""` (an unset variable) is refused, not taken as runs/<name>."""
    import os

    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    done = subprocess.run([*CLI, "run", str(tiny), "--out", "~/runs/x", "--label-key", "nope",
                           *TINY], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 2, done.stderr
    assert "label column 'nope'" in done.stderr
    assert not (tmp_path / "~").exists()
    assert (home / "runs" / "x" / "run.log").is_file()
    for out in ("", " "):
        done = subprocess.run([*CLI, "run", str(tiny), "--out", out, *TINY], capture_output=True,
                              text=True, cwd=tmp_path)  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "--out is empty" in done.stderr
        assert not (tmp_path / "runs").exists()


def test_a_bad_list_item_names_a_set_that_can_be_typed() -> None:
    """No --set takes an index: the fix for cvae.n_hidden[1] is the whole list."""
    from cellsynth import config
    from cellsynth.errors import ConfigError

    with pytest.raises(ConfigError, match=r"cvae.n_hidden\[1\] must be int.*--set cvae.n_hidden=\.\.\.$"):
        config.load(None, ["cvae.n_hidden=[32, 32.5]"])


def test_a_run_refused_by_another_runs_lock_writes_nothing_into_its_log(finished_run: Path,
                                                                        tiny: Path) -> None:  # fmt: skip
    """A second run into a folder a running one holds is refused before the command line
    opens run.log there (its lines went into the first run's log)."""
    import json
    import os
    import platform

    lock = finished_run / "run.lock"
    log = finished_run / "run.log"
    before = log.read_bytes()
    lock.write_text(json.dumps({"pid": os.getpid(), "host": platform.node(),
                                "started": "now"}))  # this test's process: alive  # fmt: skip
    try:
        done = _run(str(tiny), "--out", str(finished_run))
    finally:
        lock.unlink()
    assert done.returncode == 2, done.stderr
    assert "in use by another cellsynth run" in done.stderr
    assert log.read_bytes() == before
