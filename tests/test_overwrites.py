"""An output never destroys or mixes with what its command did not write: a run's results, a
model's folder, anyone's files (fast checks on the output paths, before any work)."""

from __future__ import annotations

import json

import pytest

from cellsynth.errors import CellsynthError
from cellsynth.evaluation import _out_dir
from cellsynth.models.base import check_save_dir
from cellsynth.pipeline.fit import check_model_out


def _run_dir(path):
    (path / "metrics").mkdir(parents=True)
    (path / "manifest.json").write_text("{}")
    (path / "config.toml").write_text("seed = 0\n")
    return path


def _model_dir(path, *extra):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model": "nb", "format_version": 1}))
    (path / "params.safetensors").write_bytes(b"x")
    (path / "checksums.json").write_text(json.dumps({"config.json": "0", "params.safetensors": "0"}))
    for name in extra:
        (path / name).mkdir() if name == "checkpoint" else (path / name).write_text("mine")
    return path


def test_an_evaluation_is_not_written_into_a_run_or_over_other_files(tmp_path):
    run = _run_dir(tmp_path / "run")
    for out in (run, run / "metrics", run / "metrics" / "new"):
        with pytest.raises(CellsynthError, match=r"is in the run directory .*give a folder outside"):
            _out_dir(out)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "fidelity.json").write_text(json.dumps({"mine": 1}))
    with pytest.raises(CellsynthError, match=r"holds fidelity\.json that cellsynth evaluate did not"):
        _out_dir(mine)
    (mine / "fidelity.json").unlink()
    (mine / "per_type.csv").write_text("a,b\n")
    with pytest.raises(CellsynthError, match=r"holds per_type\.csv"):
        _out_dir(mine)
    earlier = tmp_path / "earlier"  # an earlier evaluation's files may be replaced
    earlier.mkdir()
    (earlier / "fidelity.json").write_text(json.dumps({"synthetic_vs_real": {}}))
    (earlier / "fidelity.md").write_text("# Fidelity\n\ntext\n")
    (earlier / "per_type.csv").write_text("a,b\n")
    assert _out_dir(earlier) == earlier
    (earlier / "fidelity.md").write_text("# My notes\n")
    with pytest.raises(CellsynthError, match="did not write"):
        _out_dir(earlier)
    assert _out_dir(tmp_path / "new") == tmp_path / "new"


def test_a_save_keeps_files_that_are_not_the_model(tmp_path):
    check_save_dir(_model_dir(tmp_path / "plain"))  # a model alone is replaced whole
    check_save_dir(_model_dir(tmp_path / "trained", "checkpoint", "run_config.toml"))
    with pytest.raises(CellsynthError, match=r"holds a saved model and other files \(NOTES.txt\)"):
        check_save_dir(_model_dir(tmp_path / "notes", "NOTES.txt"))
    with pytest.raises(CellsynthError, match="is inside the model directory"):
        check_save_dir(tmp_path / "plain" / "sub")
    run = _run_dir(tmp_path / "run")
    with pytest.raises(CellsynthError, match=r"is in the run directory .*generator/"):
        check_model_out(run / "generator")
    check_model_out(tmp_path / "elsewhere")
