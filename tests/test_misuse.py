"""Misuse that must never give a silent wrong result (issue 20): each class of bad input ends in
a one-line error (exit 2 from the CLI, no traceback) or a correct recovery."""

from __future__ import annotations

import json
import logging
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
