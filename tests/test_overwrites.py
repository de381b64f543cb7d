"""What commands write: an output never destroys or mixes with what its command did not write
(a run's results, a model's folder, anyone's files: checked on the paths, before any work); JSON
is strict; an evaluation says when the cells it scores are empty."""

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
        check_model_out(tmp_path / "plain" / "sub")  # fit --out: a refit would delete it
    run = _run_dir(tmp_path / "run")
    with pytest.raises(CellsynthError, match=r"is in the run directory .*generator/"):
        check_model_out(run / "generator")
    check_model_out(tmp_path / "elsewhere")


def test_json_outputs_are_strict_json(tmp_path):
    """A NaN (a correlation over constant values: cells without counts) was written as a bare
    NaN, which jq, JavaScript and strict parsers refuse: it is null."""
    import numpy as np

    from cellsynth.outputs import write_json

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))

    write_json(tmp_path / "x.json", {"r": float("nan"), "f32": np.float32("nan"),
                                     "arr": np.array([1.0, np.inf]), "ok": [0.5, -np.inf]})
    assert strict((tmp_path / "x.json").read_text()) == {"r": None, "f32": None,
                                                         "arr": [1.0, None], "ok": [0.5, None]}


def test_an_evaluation_of_empty_synthetic_cells_says_so(caplog):
    """All-zero synthetic cells (a generator that failed) were scored without a word."""
    import logging
    import types

    import numpy as np
    import scipy.sparse as sp

    from cellsynth.evaluation import _warn_empty_cells

    full = sp.csr_matrix(np.ones((10, 4), dtype=np.float32))
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        _warn_empty_cells(types.SimpleNamespace(counts=full))
        assert not caplog.text
        empty = sp.vstack([full[:5], sp.csr_matrix((5, 4), dtype=np.float32)], format="csr")
        _warn_empty_cells(types.SimpleNamespace(counts=empty))
    assert "5 of the 10 synthetic cells scored (50%) hold no count at all" in caplog.text
