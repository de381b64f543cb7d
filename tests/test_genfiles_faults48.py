"""The files ``cellsynth generate`` and ``cs.*.sample`` write, read back as a biologist would
(session 48's sweep of generated files): well-formed for anndata and scanpy, and the output
path misused."""

from __future__ import annotations

import warnings

import anndata as ad
import h5py
import numpy as np
import pytest

from cellsynth.cli import main
from test_covariates import _design_atlas


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A one-epoch CVAE (its cells streamed to the file) and an nb model on a small design
    atlas with gene symbols beside the names, saved."""
    from cellsynth.models import CVAE, NegBinBaseline

    a = _design_atlas(seed=2)[:600].copy()
    a.var["gene_symbols"] = [f"SYM{i}" for i in range(a.n_vars)]
    folder = tmp_path_factory.mktemp("genfiles48")
    cvae = CVAE(a, label_key="cell_type", covariate_keys=["condition"])
    cvae.train(max_epochs=1, batch_size=128, n_hidden=[16], n_latent=4, min_steps=0,
               device="cpu", seed=0)
    cvae.save(folder / "cvae")
    nb = NegBinBaseline(covariate_keys=["condition"])
    nb.fit(a, "cell_type")
    nb.save(folder / "nb")
    return {"cvae": folder / "cvae", "nb": folder / "nb"}


def _generate(model, out, *extra) -> int:
    return main(["generate", str(model), "--n-per-type", "5", "--out", str(out), "--quiet",
                 *extra])


def test_streamed_cells_pass_scanpys_pca(models, tmp_path):
    """A CVAE's cells streamed to the file had an int32 ``indices`` beside an int64 ``indptr``:
    anndata reads them back as stored, and ``sc.pp.pca`` failed with scikit-learn's "Buffer
    dtype mismatch, expected 'const int32_t' but got 'long'". ``cellsynth simulate``'s files
    were written the same way."""
    import scanpy as sc

    out = tmp_path / "cells.h5ad"
    assert _generate(models["cvae"], out) == 0
    sim = tmp_path / "sim.h5ad"
    assert main(["simulate", "--cells", "60", "--genes", "30", "--types", "2", "--out",
                 str(sim), "--quiet"]) == 0
    for path in (out, sim):
        with h5py.File(path) as f:
            assert f["X/indices"].dtype == f["X/indptr"].dtype
        a = ad.read_h5ad(path)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            sc.pp.normalize_total(a)
            sc.pp.log1p(a)
            sc.pp.pca(a, n_comps=5)
        assert a.obsm["X_pca"].shape == (a.n_obs, 5)


def test_csr_writer_widens_past_int32(tmp_path):
    """The streamed writer keeps ``indices`` and ``indptr`` of one dtype when the values pass
    int32: both become int64, the rows written before kept."""
    import scipy.sparse as sp

    from cellsynth.data.csr_writer import CSRWriter

    x = sp.random(6, 5, density=0.5, format="csr", random_state=0, dtype=np.float32)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        writer = CSRWriter(f, "X", 5)
        writer.append(x[:3])
        assert f["X/indptr"].dtype == np.int32
        writer._widen(block=2)
        writer.append(x[3:])
        assert f["X/indices"].dtype == f["X/indptr"].dtype == np.int64
        back = sp.csr_matrix((f["X/data"][:], f["X/indices"][:], f["X/indptr"][:]),
                             shape=(6, 5))
    assert (back != x).nnz == 0


def test_out_with_a_tilde_is_written_in_the_home_folder(models, tmp_path, monkeypatch):
    """``--out '~/cells.h5ad'`` (quoted, so the shell left the ``~``) was checked as the home
    folder's file but written into a folder named ``~`` under the current one; a ``~user`` that
    does not exist did not name ``--out``."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    assert _generate(models["nb"], "~/cells.h5ad") == 0
    assert (home / "cells.h5ad").is_file()
    assert not (work / "~").exists()
    from cellsynth.errors import ConfigError
    from cellsynth.pipeline.generate import generate_to_file

    with pytest.raises(ConfigError, match="--out"):
        generate_to_file(models["nb"], "~no_such_user_48/cells.h5ad", n_per_type=2)


@pytest.mark.parametrize("model", ["nb", "reference"])
def test_fitted_from_a_file_the_cells_keep_the_gene_symbols(model, tmp_path):
    """``cellsynth fit --model nb`` (or ``reference``, or ``scvi``) read the file's cells
    without their ``var`` columns, so the model kept no gene symbols and its generated cells'
    ``var`` had none, where a CVAE's had them; the ``reference`` model kept none in Python
    either (fitted, saved and loaded)."""
    a = _design_atlas(seed=3)[:400].copy()
    a.var["gene_symbols"] = [f"SYM{i}" for i in range(a.n_vars)]
    a.write_h5ad(tmp_path / "atlas.h5ad")
    folder, out = tmp_path / "model", tmp_path / "cells.h5ad"
    fast = ["--set", "seed_vae.max_epochs=1"] if model == "reference" else []
    assert main(["fit", str(tmp_path / "atlas.h5ad"), "--label-key", "cell_type", "--model",
                 model, "--out", str(folder), *fast, "--quiet"]) == 0
    assert _generate(folder, out) == 0
    var = ad.read_h5ad(out).var
    assert (var["gene_symbols"] == a.var.loc[var.index, "gene_symbols"]).all()


def test_a_runs_preprocessed_data_is_not_replaced(models, tmp_path):
    """``--out run/data/preprocessed.h5ad`` replaced the run's preprocessed cells: its
    ``uns['cellsynth']`` (``has_counts``, ``label_key``) was taken for generated cells'
    provenance. Only cells that name the model that drew them are replaced."""
    from cellsynth import keys as K

    pre = _design_atlas(seed=4)[:50].copy()
    pre.uns = {K.UNS: {"has_counts": True, "label_key": "cell_type"}}  # as data.qc writes it
    out = tmp_path / "preprocessed.h5ad"
    pre.write_h5ad(out)
    assert _generate(models["nb"], out) == 2
    assert ad.read_h5ad(out).n_obs == 50
    assert main(["simulate", "--cells", "60", "--genes", "30", "--types", "2", "--out",
                 str(out), "--quiet"]) == 2
    cells = tmp_path / "cells.h5ad"
    assert _generate(models["nb"], cells) == 0
    assert _generate(models["cvae"], cells, "--seed", "3") == 0  # generated cells: replaced
    assert ad.read_h5ad(cells).uns[K.UNS]["model"] == "cvae"
