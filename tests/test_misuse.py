"""Misuse that must never give a silent wrong result (issue 20): each class of bad input ends in
a one-line error (exit 2 from the CLI, no traceback) or a correct recovery."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from cellsynth import evaluation
from cellsynth.cli import _parse_types
from cellsynth.data.simulate import simulate_atlas
from cellsynth.errors import CellsynthError

LABEL = "cell_type"


# -- 12: an evaluation that cannot be fooled by copies ----------------------------------------

@pytest.fixture(scope="module")
def atlas_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("atlas") / "real.h5ad"
    simulate_atlas(600, 150, 3, seed=0, label_key=LABEL).write_h5ad(path)
    return path


def test_the_real_file_as_synthetic_is_flagged_as_memorisation(atlas_file, tmp_path, caplog):
    copy = tmp_path / "copy.h5ad"
    shutil.copyfile(atlas_file, copy)  # another name, the same bytes
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        md = evaluation.evaluate(atlas_file, copy, LABEL, tmp_path / "out", max_cells=200)
    result = json.loads((tmp_path / "out" / "fidelity.json").read_text())
    memo = result["memorisation"]
    assert memo["flagged"] is True
    assert memo["exact_copy_fraction"] > 0.1  # the subsamples share real cells
    assert any("real file itself" in r for r in memo["reasons"])
    assert "Memorisation" in md.read_text()
    assert "memorisation" in caplog.text and "WARNING" in caplog.text


def test_copied_cells_in_memory_are_flagged_without_a_file(atlas_file):
    real = ad.read_h5ad(atlas_file)
    syn = real[np.arange(0, real.n_obs, 2)].copy()  # half the real cells, copied
    syn.obs_names = [f"syn{i}" for i in range(syn.n_obs)]
    memo = evaluation.compare(real, syn, label_key=LABEL, max_cells=200)["memorisation"]
    assert memo["flagged"] and memo["exact_copies"] > 0
    assert memo["near_copy_fraction"] > 0.1


def test_cells_from_another_draw_are_not_flagged(atlas_file):
    real = ad.read_h5ad(atlas_file)
    other = simulate_atlas(600, 150, 3, seed=0, label_key=LABEL, )
    # the same model, other cells: new draws of the counts
    rng = np.random.default_rng(5)
    other.X = rng.poisson(np.asarray(other.X.todense() if hasattr(other.X, "todense")
                                     else other.X) + 0.0).astype(np.float32)
    result = evaluation.compare(real, other, label_key=LABEL, max_cells=200)
    assert result["memorisation"]["exact_copy_fraction"] < 0.01
    assert result["memorisation"]["near_copy_fraction"] < 0.01


# -- 11: duplicate requests -------------------------------------------------------------------

def test_a_type_requested_twice_is_an_error():
    assert _parse_types("B=5, NK=7") == {"B": 5, "NK": 7}
    with pytest.raises(CellsynthError, match="'B' twice"):
        _parse_types("B=5,B=7")
    with pytest.raises(CellsynthError, match="'B cell' twice"):
        _parse_types("B cell=5, B cell =7")


# -- 10: downloads that are not HDF5 ----------------------------------------------------------

@pytest.mark.parametrize(("body", "said"), [
    (b"<!DOCTYPE html><html><head><title>503 Service Unavailable</title></head></html>",
     "an HTML page: '503 Service Unavailable'"),
    (b"\x1f\x8b\x08\x00" + bytes(100), "a gzip file"),
    (b"", "an empty file"),
])
def test_a_download_that_is_not_hdf5_is_refused(body, said, tmp_path):
    from _http_server import start
    from cellsynth.data.download import download
    from cellsynth.errors import DownloadError

    srv, _state, base = start(body)
    try:
        with pytest.raises(DownloadError, match="not an HDF5") as err:
            download("E-TEST-1", tmp_path, base_url=base, progress=False, timeout=5.0)
    finally:
        srv.shutdown()
        srv.server_close()
    assert said in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing under the final name, no .part to resume


# -- 9: broken models -------------------------------------------------------------------------

def _saved(tmp_path, **kw):
    import torch

    from cellsynth.models import _training as tr

    module = torch.nn.Linear(4, 3)
    meta = {"model": "Toy", "format_version": 1}
    return tr.save_model_dir(tmp_path / "model", meta, module, ["a", "b"], {"epochs": 1}, **kw)


def test_a_model_file_changed_after_saving_is_refused_naming_it(tmp_path):
    from cellsynth.errors import ModelFileError
    from cellsynth.models import _training as tr

    d = _saved(tmp_path, extra_files={"genes.json": json.dumps(["g1", "g2", "g3", "g4"])})
    sums = json.loads((d / "checksums.json").read_text())
    assert set(sums) == {"config.json", "weights.safetensors", "labels.json", "history.json",
                         "genes.json"}
    tr.load_model_dir(d, "Toy", 1)  # untouched: loads
    for name, edit in [("genes.json", '["g1", "g2", "g3", "X"]'),
                       ("config.json", '{"model": "Toy", "format_version": 1, "x": 1}'),
                       ("labels.json", '["b", "a"]')]:
        before = (d / name).read_text()
        (d / name).write_text(edit)
        with pytest.raises(ModelFileError, match=f"{re.escape(name)} changed after the model was saved"):
            tr.load_model_dir(d, "Toy", 1)
        (d / name).write_text(before)
    (d / "genes.json").unlink()
    with pytest.raises(ModelFileError, match=r"genes\.json is listed in checksums\.json but missing"):
        tr.load_model_dir(d, "Toy", 1)


def test_an_older_model_without_checksums_loads_with_a_warning(tmp_path, caplog):
    from cellsynth.models import _training as tr

    d = _saved(tmp_path)
    (d / "checksums.json").unlink()
    with caplog.at_level(logging.WARNING):
        tr.load_model_dir(d, "Toy", 1)
    assert "has no checksums.json" in caplog.text


def test_non_finite_weights_are_refused_at_save_and_at_load(tmp_path):
    import torch
    from safetensors.torch import save_file

    from cellsynth.errors import ModelFileError
    from cellsynth.models import _training as tr

    module = torch.nn.Linear(4, 3)
    with torch.no_grad():
        module.weight[0, 0] = float("nan")
    with pytest.raises(ModelFileError, match=r"non-finite values \(weight: 1 of 12\)"):
        tr.save_model_dir(tmp_path / "nan", {"model": "Toy", "format_version": 1}, module,
                          ["a"], {})
    assert not (tmp_path / "nan").exists()
    d = _saved(tmp_path)
    (d / "checksums.json").unlink()  # an older save, its weights NaN
    state = {"weight": torch.full((3, 4), float("nan")), "bias": torch.zeros(3)}
    save_file(state, str(d / "weights.safetensors"))
    with pytest.raises(ModelFileError, match="holds non-finite weights"):
        tr.load_model_dir(d, "Toy", 1)
