"""Valid but unusual inputs (session 44's sweep): a backed AnnData is trained on as the user
holds it (its edited obs; a subset of it refused, not read whole), duplicate entries of a
non-canonical CSR are summed on the GPU's gather path too, and explicitly stored zeros do not
make a gene detected."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from cellsynth.cells import for_training
from cellsynth.data.rows import Rows
from cellsynth.errors import DataError


def test_a_backed_anndata_is_trained_on_as_held(kang_path: Path) -> None:
    a = ad.read_h5ad(kang_path, backed="r")
    try:
        with pytest.raises(DataError, match="subset"):
            for_training(a[(a.obs["condition"] == "ctrl").to_numpy()], "cell_type", seed=0)
        a.obs["cell_type"] = a.obs["cell_type"].cat.rename_categories({"B cells": "B"})
        cells = for_training(a, "cell_type", seed=0)
        try:
            assert "B" in set(cells.obs["cell_type"].astype(str))
            assert "B cells" not in set(cells.obs["cell_type"].astype(str))
        finally:
            cells.close()
    finally:
        a.file.close()


def test_duplicate_entries_are_summed_where_rows_are_gathered() -> None:
    dense = np.array([[3, 0, 2], [0, 5, 0], [1, 1, 4]], dtype=np.float32)
    canonical = sp.csr_matrix(dense)
    # each count above 1 stored as two entries of the same cell and gene (not canonical)
    rows, cols, vals = [], [], []
    for r, c in zip(*np.nonzero(dense), strict=True):
        v = dense[r, c]
        parts = [v] if v < 2 else [1.0, v - 1.0]
        rows += [r] * len(parts)
        cols += [c] * len(parts)
        vals += parts
    split = sp.csr_matrix((np.asarray(vals, np.float32), np.asarray(cols), np.r_[0, np.cumsum(
        np.bincount(rows, minlength=3))]), shape=dense.shape)  # duplicates kept as stored
    assert not split.has_canonical_format
    codes = np.zeros(3, dtype=np.int64)
    for counts in (canonical, split):
        gathered = Rows(counts, codes, torch.device("cpu"), gather=True)  # the GPU's path
        x = gathered.batch(np.arange(3))[0]
        np.testing.assert_array_equal(x.numpy(), dense)
        np.testing.assert_array_equal(gathered.library.numpy(), dense.sum(1))


def test_stored_zeros_do_not_make_a_gene_detected(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = sp.csr_matrix(rng.poisson(2.0, (60, 8)).astype(np.float32))
    x = sp.hstack([x, sp.csr_matrix(np.zeros((60, 1), np.float32))], format="csr")
    # the last gene: an explicit 0.0 stored in every cell
    x = sp.csr_matrix((np.r_[x.data, np.zeros(60, np.float32)],
                       np.r_[x.indices, np.full(60, 8)],
                       x.indptr + np.r_[0, np.arange(1, 61)]), shape=x.shape)  # fmt: skip
    x.has_sorted_indices = False
    a = ad.AnnData(X=x)
    a.obs["cell_type"] = ["A", "B"] * 30
    a.var_names = [f"g{i}" for i in range(9)]
    cells = for_training(a, "cell_type", seed=0, drop_undetected=True)
    assert "g8" not in cells.genes and len(cells.genes) == 8


def test_float16_sparse_values_are_named_as_the_cause(tmp_path: Path, kang_path: Path) -> None:
    import h5py

    from cellsynth.data.io import read

    path = tmp_path / "half.h5ad"
    a = ad.read_h5ad(kang_path)[:50].copy()
    a.write_h5ad(path)
    with h5py.File(path, "r+") as f:  # as some converters write it
        values = f["X/data"][...].astype(np.float16)
        del f["X/data"]
        f["X/data"] = values
    with pytest.raises(DataError, match="float16"):
        read(path, backed=False)


def test_a_run_says_it_replaces_the_datas_own_split(caplog) -> None:
    """cellsynth run draws its own split: a cellsynth_split column the data hold (a fit keeps
    it) is replaced, and the log says so (its test cells may be trained on)."""
    from cellsynth import config
    from cellsynth.data.qc import preprocess
    from cellsynth.data.simulate import simulate_atlas

    a = simulate_atlas(600, 400, 3, seed=0, doublet_rate=0.0, uninformative_rate=0.0)
    cfg = config.load(None, ["dataset.label_key=cell_type", "qc.min_genes_per_cell=5",
                             "qc.min_cells_per_gene=1"])  # fmt: skip
    a.obs["cellsynth_split"] = "test"
    preprocess(a, cfg.dataset, cfg.qc, cfg.split)
    assert "replaced by this run's own split" in caplog.text
