"""Misuse found by trying the CLI and the API as a careless user would: each is refused with one
line saying what was wrong and what to do, before any long work, and never as a traceback."""

from __future__ import annotations

import errno
import logging
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import cellsynth as cs
from cellsynth.cli import main
from cellsynth.data.download import expression_atlas_url
from cellsynth.data.io import read
from cellsynth.data.labels import check_label
from cellsynth.data.simulate import write_atlas
from cellsynth.data.store import _write_advice
from cellsynth.errors import ConfigError, DataError
from cellsynth.models.nb import NegBinBaseline
from cellsynth.outputs import size_text as _size
from test_bad_input import LABEL, cli_error, fit_argv, make_adata, one_line, write


@pytest.fixture(scope="module")
def nb_model(tmp_path_factory):
    """An nb generator conditioned on a covariate, saved (``generate`` reads it back)."""
    adata = make_adata(90)
    adata.obs["condition"] = pd.Categorical(np.where(np.arange(90) % 2, "stim", "ctrl"))
    model = NegBinBaseline(covariate_keys=["condition"])
    model.fit(adata, LABEL, seed=0)
    out = tmp_path_factory.mktemp("nb") / "model"
    model.save(out)
    return model, out


def test_a_directory_given_as_the_data_file(tmp_path, capsys):
    with pytest.raises(DataError) as err:
        read(tmp_path)
    one_line(err.value, "is a directory; give the path of an .h5ad file")
    cli_error(capsys, fit_argv(tmp_path, tmp_path / "m"), "is a directory")
    # a saved model or a run directory given as cells: said what it is, and where cells are
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DataError, match=r"is a saved model's directory.*cellsynth generate"):
        read(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(DataError, match=r"is a run directory.*synthetic"):
        read(tmp_path)


def test_a_base_url_without_a_scheme():
    with pytest.raises(ConfigError) as err:
        expression_atlas_url("E-ANND-5", "notaurl")
    one_line(err.value, "must start with http://, https:// or file://")
    assert expression_atlas_url("E-ANND-5", "http://127.0.0.1:1/x").startswith("http://")


def test_an_atlas_too_large_for_memory_is_refused_before_it_starts(tmp_path, monkeypatch):
    monkeypatch.setattr("cellsynth.data.simulate.available_memory", lambda: 2.0**30)
    with pytest.raises(ConfigError) as err:
        write_atlas(tmp_path / "atlas.h5ad", 10**9, 300, 5)
    one_line(err.value, "ask for fewer cells (n_cells= or --cells)")
    assert not list(tmp_path.iterdir())


def test_counts_too_large_and_a_where_that_is_not_a_dict(nb_model, tmp_path, capsys):
    model, saved = nb_model
    for request in ({"B cell": 10**20}, pd.DataFrame({LABEL: ["B cell"], "n": [10**15]})):
        with pytest.raises(DataError) as err:
            model.sample(request)
        one_line(err.value, "more than one request can hold")
    with pytest.raises(DataError) as err:
        model.sample({"B cell": 3}, where="condition=stim")
    one_line(err.value, "where is a {covariate: level} dict")
    out = str(tmp_path / "x.h5ad")
    cli_error(capsys, ["generate", str(saved), "--types", "B cell=99999999999999999999",
                      "--out", out],
              "more than one request can hold")
    cli_error(capsys, ["generate", str(saved), "--n-per-type", "0", "--out", out],
              "--n-per-type must be at least 1, got 0")
    cli_error(capsys, ["generate", str(saved), "--types", "a=b,c=5", "--out", out],
              "goes in a --request file")


def test_a_label_per_cell_is_not_cell_types(tmp_path, capsys):
    adata = make_adata(120)
    adata.obs[LABEL] = [f"barcode_{i}" for i in range(adata.n_obs)]
    with pytest.raises(DataError) as err:
        check_label(adata, LABEL)
    one_line(err.value, "looks like a cell or sample identifier, not cell types")
    cli_error(capsys, fit_argv(write(adata, tmp_path / "ids.h5ad"), tmp_path / "m"),
              "not cell types")
    check_label(make_adata(120), LABEL)  # three types of 40 cells: fine


def test_cells_without_any_count(tmp_path):
    adata = make_adata(60)
    adata.X = sp.csr_matrix(adata.shape, dtype=np.float32)
    with pytest.raises(DataError) as err:
        cs.CVAE(adata, label_key=LABEL).fit(adata, LABEL)
    one_line(err.value, "60 of the 60 labelled cells have no count at all; give cells with")


def test_evaluate_names_the_input_with_bad_values(tmp_path):
    real = make_adata(60)
    bad = make_adata(60, seed=1)
    bad.X[0, 0] = np.nan
    with pytest.raises(DataError) as err:
        cs.evaluate(real, bad, label_key=LABEL)
    one_line(err.value, "the synthetic")
    assert "NaN" in str(err.value)


def test_plots_of_cells_refuse_an_evaluation_result():
    adata = make_adata(60)
    result = SimpleNamespace(verdict={})
    for plot in (lambda: cs.pl.library_sizes(result, adata),
                 lambda: cs.pl.umap(adata, result, label_key=LABEL)):
        with pytest.raises(DataError) as err:
            plot()
        one_line(err.value, "must be an AnnData of cells, got SimpleNamespace (an evaluation")


def test_covariate_keys_as_one_string():
    adata = make_adata(60)
    adata.obs["condition"] = pd.Categorical(np.where(np.arange(60) % 2, "stim", "ctrl"))
    assert cs.CVAE(adata, label_key=LABEL, covariate_keys="condition").config.covariates == [
        "condition"]


def test_like_warns_when_the_file_shares_few_genes(nb_model, tmp_path, caplog):
    _, saved = nb_model
    other = make_adata(30)
    other.var_names = [f"other_{j}" for j in range(other.n_vars)]
    other.obs["condition"] = pd.Categorical(np.where(np.arange(30) % 2, "stim", "ctrl"))
    caplog.set_level(logging.WARNING, logger="cellsynth.pipeline.generate")
    assert main(["generate", str(saved), "--like", str(write(other, tmp_path / "o.h5ad")),
                 "--out", str(tmp_path / "twin.h5ad"), "--quiet"]) == 0
    assert "shares 0 of the model's 30 genes" in caplog.text
    assert ad.read_h5ad(tmp_path / "twin.h5ad").n_obs == 30


def test_write_failures_give_the_cause_s_remedy():
    assert "not writable" in _write_advice(OSError(errno.EACCES, "Permission denied"))
    assert "disk is full" in _write_advice(OSError(errno.ENOSPC, "No space left"))
    assert _size(0) == "0 bytes" and _size(1500) == "1.5 kB" and _size(3.2e9) == "3.2 GB"


def test_info_checks_a_model_s_files_as_generate_does(nb_model, tmp_path, capsys):
    import shutil

    from cellsynth.info import describe

    _, saved = nb_model
    copy = tmp_path / "model"
    shutil.copytree(saved, copy)
    assert describe(copy)["kind"] == "model"
    weights = next(p for p in copy.iterdir() if p.suffix == ".safetensors")
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    cli_error(capsys, ["info", str(copy)], f"{weights} changed after the model was saved")


def test_info_tells_a_killed_run_from_a_running_one(tmp_path):
    import json
    import os
    import platform

    from cellsynth.info import describe

    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"stages": {"data": {"status": "done"},
                                                              "generator": {"status": "running"}}}))
    stages = describe(run)["stages"]  # no lock: nothing runs it
    assert stages["data"]["status"] == "done"
    assert stages["generator"]["status"].startswith("interrupted")
    (run / "run.lock").write_text(json.dumps({"pid": os.getppid(), "host": platform.node()}))
    assert describe(run)["stages"]["generator"]["status"] == "running"  # held by a live process


def test_saved_models_are_readable_as_the_umask_allows(tmp_path):
    """safetensors writes owner-only files; a shared model directory must load for the group."""
    import os
    import stat

    adata = make_adata(60)
    old = os.umask(0o022)
    try:
        model = NegBinBaseline()
        model.fit(adata, LABEL, seed=0)
        model.save(tmp_path / "nb")
        cvae = cs.CVAE(adata, label_key=LABEL, config=cs.config.CVAEConfig(
            n_hidden=[16], n_latent=2, n_embed=4, max_epochs=1, device="cpu"))
        cvae.fit(adata, LABEL, seed=0)
        cvae.save(tmp_path / "cvae")
    finally:
        os.umask(old)
    files = [p for d in ("nb", "cvae") for p in (tmp_path / d).iterdir() if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
