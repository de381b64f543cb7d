"""Tests for cellsynth.data.simulate: the simulated atlas and its chunked writer."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from cellsynth.data import simulate
from cellsynth.data.simulate import simulate_atlas, write_atlas
from cellsynth.errors import ConfigError

UNINFORMATIVE = ("LOW_Q", "DOUBLET")


@pytest.fixture(scope="module")
def demo() -> ad.AnnData:
    return simulate_atlas(seed=0)


def _informative(adata: ad.AnnData, key: str = "cell_type") -> np.ndarray:
    return ~adata.obs[key].astype(str).str.startswith(UNINFORMATIVE).to_numpy()


def _assert_same(a: ad.AnnData, b: ad.AnnData) -> None:
    assert a.shape == b.shape
    assert (a.X != b.X).nnz == 0
    assert a.obs.equals(b.obs)
    assert a.var.equals(b.var)
    assert a.uns["celltype_groups"] == b.uns["celltype_groups"]


def test_counts_are_whole_csr_float32(demo: ad.AnnData) -> None:
    x = demo.X
    assert demo.shape == (3000, 2000)
    assert sp.issparse(x) and x.format == "csr" and x.dtype == np.float32
    assert np.all(x.data > 0) and np.array_equal(x.data, np.round(x.data))
    fresh = sp.csr_matrix((x.data, x.indices, x.indptr), shape=x.shape)
    assert fresh.has_canonical_format  # sorted, no duplicates
    assert 0.05 < x.nnz / np.prod(x.shape) < 0.15  # realistic sparsity for 2,000 genes
    assert x.max() > 100  # a few highly expressed genes


def test_every_type_present_and_sizes_spread(demo: ad.AnnData) -> None:
    labels = demo.obs["cell_type"]
    sizes = labels.astype(str)[_informative(demo)].value_counts()
    assert len(sizes) == 8 and set(sizes.index) == set(demo.uns["celltype_groups"])
    assert sizes.min() >= 15
    assert sizes.max() / sizes.min() > 5  # sizes spread like a real atlas
    assert str(labels.dtype) == "category"


def test_minimum_type_size_holds_for_many_types() -> None:
    adata = simulate_atlas(2000, 300, 60, seed=3, n_mito=5)
    sizes = adata.obs["cell_type"].astype(str)[_informative(adata)].value_counts()
    assert len(sizes) == 60 and sizes.min() >= 15


def test_genes_and_uns(demo: ad.AnnData) -> None:
    names = demo.var_names
    assert list(names[:3]) == ["MT-ND1", "MT-ND2", "MT-CO1"]
    assert names[:13].str.startswith("MT-").all() and not names[13:].str.startswith("MT-").any()
    assert names[13] == "GENE00001" and names.is_unique
    assert demo.var["gene_ids"].is_unique
    assert demo.uns["label_key"] == "cell_type"
    assert demo.uns["source"].startswith("cellsynth.data.simulate")
    groups = demo.uns["celltype_groups"]
    assert all(g.startswith("group_") for g in groups.values())
    assert 1 < len(set(groups.values())) < len(groups)  # some types share a coarse group
    assert "mito" not in demo.obs and "n_genes" not in demo.obs


def test_doublets_and_uninformative_labels(demo: ad.AnnData) -> None:
    flag = demo.obs["predicted_doublets"]
    assert flag.dtype == bool and flag.sum() == round(0.02 * 3000)
    total = np.asarray(demo.X.sum(axis=1)).ravel()
    assert np.median(total[flag.to_numpy()]) > 1.5 * np.median(total[~flag.to_numpy()])
    labels = demo.obs["cell_type"].astype(str)
    assert (~_informative(demo)).sum() == round(0.01 * 3000)
    assert labels.str.startswith("LOW_Q").any() and labels.str.startswith("DOUBLET").any()
    mito = np.asarray(demo.X[:, :13].sum(axis=1)).ravel() / total
    low_q = labels.str.startswith("LOW_Q").to_numpy()
    assert np.median(mito[low_q]) > 0.15
    assert 0.01 < np.median(mito[~low_q]) < 0.08  # a few % of counts are mitochondrial


def test_rates_can_be_zero() -> None:
    adata = simulate_atlas(500, 200, 3, doublet_rate=0, uninformative_rate=0, n_mito=0)
    assert not adata.obs["predicted_doublets"].any() and _informative(adata).all()
    assert not adata.var_names.str.startswith("MT-").any()


def test_qc_columns(demo: ad.AnnData) -> None:
    adata = simulate_atlas(seed=0, qc_columns=True)
    x = adata.X
    total = np.asarray(x.sum(axis=1)).ravel()
    np.testing.assert_allclose(
        adata.obs["mito"], np.asarray(x[:, :13].sum(axis=1)).ravel() / total, rtol=1e-5
    )
    np.testing.assert_array_equal(adata.obs["n_genes"], np.diff(x.indptr))
    assert (adata.X != demo.X).nnz == 0  # the option adds columns, nothing else


def test_reproducible_and_seeded(demo: ad.AnnData) -> None:
    _assert_same(demo, simulate_atlas(seed=0))
    other = simulate_atlas(seed=1)
    assert other.shape == demo.shape and (other.X != demo.X).nnz > 0


def test_label_key_and_bad_arguments() -> None:
    adata = simulate_atlas(300, 100, 3, label_key="celltype_annotation")
    assert "celltype_annotation" in adata.obs and adata.uns["label_key"] == "celltype_annotation"
    for bad in ({"n_cells": 0}, {"n_genes": 15}, {"doublet_rate": 0.7}, {"library_size": 0}):
        with pytest.raises(ConfigError):
            simulate_atlas(**{"n_cells": 100, "n_genes": 100, **bad})


def test_whole_transcriptome_detection() -> None:
    adata = simulate_atlas(300, 33_538, 8, seed=0)
    detected = np.diff(adata.X.indptr)
    assert 500 < np.median(detected) < 2500


def test_types_separable_but_siblings_confusable() -> None:
    adata = simulate_atlas(seed=2)
    keep = _informative(adata) & ~adata.obs["predicted_doublets"].to_numpy()
    x = adata.X[keep]
    x = sp.diags(1e4 / np.asarray(x.sum(axis=1)).ravel()) @ x
    x = np.log1p(x.toarray())
    y = adata.obs["cell_type"].astype(str).to_numpy()[keep]
    train = np.random.default_rng(0).random(len(y)) < 0.7
    types = np.unique(y)
    centroids = np.stack([x[train & (y == t)].mean(axis=0) for t in types])
    dist = ((x[~train, None, :] - centroids[None]) ** 2).sum(axis=-1)
    pred = types[dist.argmin(axis=1)]
    accuracy = (pred == y[~train]).mean()
    assert 0.6 < accuracy  # chance is 1/8
    groups = adata.uns["celltype_groups"]
    wrong = pred != y[~train]
    if wrong.any():  # mistakes stay within coarse groups
        assert (
            np.mean(
                [groups[p] == groups[t] for p, t in zip(pred[wrong], y[~train][wrong], strict=True)]
            )
            > 0.8
        )


@pytest.mark.parametrize("chunk_size", [128, 500, 5000])
def test_write_atlas_equals_simulate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_size: int
) -> None:
    monkeypatch.setattr(simulate, "_BLOCK", 300)  # several random blocks, chunks across them
    args = {"seed": 4, "doublet_rate": 0.05, "uninformative_rate": 0.03, "qc_columns": True}
    expected = simulate_atlas(1000, 150, 5, label_key="celltype_annotation", **args)
    path = write_atlas(
        tmp_path / "sim.h5ad", 1000, 150, 5, chunk_size=chunk_size, **args
    )
    assert path == tmp_path / "sim.h5ad" and not (tmp_path / "sim.h5ad.part").exists()
    _assert_same(ad.read_h5ad(path), expected)


def test_chunk_size_does_not_change_the_data(tmp_path: Path) -> None:
    expected = simulate_atlas(1200, 200, 4, seed=5)
    path = write_atlas(
        tmp_path / "a.h5ad",
        1200,
        200,
        4,
        seed=5,
        label_key="cell_type",
        chunk_size=250,
    )
    _assert_same(ad.read_h5ad(path), expected)


def test_written_file_reads_backed(tmp_path: Path) -> None:
    path = write_atlas(
        tmp_path / "b.h5ad", 800, 120, 4, seed=6, chunk_size=300, compression="gzip"
    )
    memory = ad.read_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        assert backed.shape == (800, 120) and backed.isbacked
        rows = backed.X[100:200]
        rows = rows if sp.issparse(rows) else sp.csr_matrix(rows)
        assert (rows != memory.X[100:200]).nnz == 0
        assert backed.uns["label_key"] == "celltype_annotation"
        assert str(backed.obs["celltype_annotation"].dtype) == "category"
        assert backed.obs["predicted_doublets"].dtype == bool
    finally:
        backed.file.close()


def test_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(simulate, "_annotations", boom)
    with pytest.raises(RuntimeError):
        write_atlas(tmp_path / "c.h5ad", 100, 50, 2)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError):
        write_atlas(tmp_path / "d.h5ad", 100, 50, 2, chunk_size=0)
    with pytest.raises(ConfigError, match=r"need at least 23 genes \(n_genes= or --genes\): 13 "
                                          r"mitochondrial genes \(n_mito\) and 10 others; got 20"):
        write_atlas(tmp_path / "e.h5ad", 100, 20, 2)


def test_too_few_cells_for_the_types_is_said(caplog):
    import logging

    from cellsynth.data.simulate import simulate_atlas

    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        adata = simulate_atlas(5, 30, 10, seed=0)
    got = adata.obs["cell_type"].nunique()
    assert got < 10 and f"{10 - got} of the 10 cell types got no cell" in caplog.text
