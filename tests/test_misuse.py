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


# -- 7: atomic writes -------------------------------------------------------------------------

def _h5ad_fails_midway(self, path, *args, **kwargs):
    """``AnnData.write_h5ad`` that writes part of its file, then fails (a full disk)."""
    Path(path).write_bytes(b"partial")
    raise OSError(28, "No space left on device")


def _text_fails_midway(self, data, *args, **kwargs):
    """``Path.write_text`` that writes part of its file, then fails (a full disk)."""
    self.write_bytes(data[:1].encode())
    raise OSError(28, "No space left on device")


def test_a_failed_h5ad_write_leaves_no_file_under_its_name(monkeypatch, tmp_path):
    from cellsynth.data.store import write_h5ad
    from cellsynth.errors import DataError

    adata = simulate_atlas(50, 60, 2, seed=0, label_key=LABEL)
    out = tmp_path / "syn.h5ad"
    with monkeypatch.context() as m:
        m.setattr(ad.AnnData, "write_h5ad", _h5ad_fails_midway)
        with pytest.raises(DataError, match="cannot write"):
            write_h5ad(adata, out)
    assert list(tmp_path.iterdir()) == []
    write_h5ad(adata, out)
    assert ad.read_h5ad(out).n_obs == 50 and [p.name for p in tmp_path.iterdir()] == ["syn.h5ad"]
    with pytest.raises(DataError, match="is a directory"):
        write_h5ad(adata, tmp_path)


def test_generate_writes_through_the_atomic_writer():
    import inspect

    from cellsynth import cli

    source = inspect.getsource(cli.cmd_generate)
    assert "write_h5ad(syn, out)" in source and "syn.write_h5ad" not in source


def test_a_failed_text_write_keeps_the_earlier_file(monkeypatch, tmp_path):
    from cellsynth import runtime

    page = tmp_path / "report.html"
    page.write_text("earlier")
    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", _text_fails_midway)
        with pytest.raises(CellsynthError, match="disk full"):
            runtime.write_text(page, "new")
        with pytest.raises(CellsynthError, match="disk full"):
            runtime.write_json(tmp_path / "fidelity.json", {"a": 1})
    assert page.read_text() == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_reports_and_fidelity_use_the_atomic_writer(monkeypatch, tmp_path):
    """results.md, report.html and fidelity.md are written by runtime.write_text."""
    from cellsynth import evaluation, runtime
    from cellsynth.report import html, results

    for module in (html, results, evaluation):
        assert module.write_text is runtime.write_text, module.__name__
    written = []
    monkeypatch.setattr(evaluation, "write_text", lambda path, text: written.append(Path(path)))
    result = {"n_cells": {"real": {"used": 1, "total": 2, "space": 1},
                          "synthetic": {"used": 1, "total": 1}},
              "real": "a.h5ad", "synthetic": "b.h5ad", "label_key": LABEL, "max_cells": 4,
              "n_genes": 1, "real_vs_real": {"overall": {}}, "synthetic_vs_real": {"overall": {}},
              "memorisation": {"flagged": False}}
    monkeypatch.setattr(evaluation, "write_json", lambda path, data: None)
    evaluation.write(result, tmp_path)
    assert tmp_path / "fidelity.md" in written


def test_simulate_killed_midway_leaves_no_file(monkeypatch, tmp_path):
    from cellsynth.data import simulate
    from cellsynth.data.simulate import write_atlas

    def boom(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(simulate, "write_elem", boom)  # after X, while writing obs
    with pytest.raises(KeyboardInterrupt):
        write_atlas(tmp_path / "sim.h5ad", 300, 50, 3, seed=0, label_key=LABEL, progress=False)
    assert list(tmp_path.iterdir()) == []
