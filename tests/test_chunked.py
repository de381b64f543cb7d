"""Out-of-core preprocessing: the same result as the in-memory path, in bounded memory."""

from __future__ import annotations

import tracemalloc

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellsynth import config
from cellsynth import keys as K
from cellsynth.data import io
from cellsynth.data.chunked import PreprocessedStore, preprocess_backed
from cellsynth.data.csr_writer import CSRWriter
from cellsynth.data.qc import preprocess
from cellsynth.data.simulate import write_atlas
from cellsynth.data.store import H5adFile, RowStore
from cellsynth.errors import DataError


def _cfg(*overrides: str) -> config.RunConfig:
    return config.load(None, list(overrides))


def _same_csr(a: sp.csr_matrix, b: sp.csr_matrix) -> bool:
    """The same values in the same places, bit for bit (each row's genes in order: the
    chunked writer sorts a row's columns, a matrix in memory may hold them in any order)."""
    a, b = sp.csr_matrix(a).sorted_indices(), sp.csr_matrix(b).sorted_indices()
    return (a.shape == b.shape and np.array_equal(a.indptr, b.indptr)
            and np.array_equal(a.indices, b.indices) and np.array_equal(a.data, b.data)
            and a.dtype == b.dtype)


def _both(path, cfg, tmp_path, chunk_size, groups=None):
    """In-memory preprocess of the whole file and preprocess_backed of it, read back."""
    mem, rep = preprocess(ad.read_h5ad(path), cfg.dataset, cfg.qc, cfg.split, groups=groups, seed=3)
    out, rep_b = preprocess_backed(path, cfg.dataset, cfg.qc, cfg.split, groups=groups, seed=3,
                                   out_path=tmp_path / "pre.h5ad", chunk_size=chunk_size)
    assert rep_b.__dict__ == rep.__dict__  # every step, dropped types, per-type counts
    with PreprocessedStore(out) as store:
        got = store.to_memory()
        assert store.normalised.shape == mem.shape
    return mem, got


def _assert_same(mem: ad.AnnData, got: ad.AnnData) -> None:
    assert list(got.obs_names) == list(mem.obs_names)
    assert list(got.var_names) == list(mem.var_names)
    pd.testing.assert_frame_equal(got.obs, mem.obs)
    assert _same_csr(got.X, mem.X)  # normalised on the fly, bit for bit
    assert (K.COUNTS in got.layers) == (K.COUNTS in mem.layers)
    if K.COUNTS in mem.layers:
        assert _same_csr(got.layers[K.COUNTS], mem.layers[K.COUNTS])
    assert got.uns == mem.uns


def test_same_as_preprocess_on_kang(kang_path, tmp_path):
    mem, got = _both(kang_path, _cfg(), tmp_path, chunk_size=97, groups={"B cells": "B"})
    assert mem.n_obs > 1000
    _assert_same(mem, got)
    rows = np.arange(3, mem.n_obs, 7)  # a subsample, as evaluation reads one
    with PreprocessedStore(tmp_path / "pre.h5ad") as store:
        _assert_same(mem[rows].copy(), store.to_memory(rows))


@pytest.mark.parametrize("qc_columns", [False, True])  # mito computed per chunk, or from obs
def test_same_as_preprocess_on_simulated(tmp_path, qc_columns):
    path = write_atlas(tmp_path / "atlas.h5ad", 3000, 600, 6, seed=2, chunk_size=700, qc_columns=qc_columns, doublet_rate=0.05,
                       uninformative_rate=0.05)
    cfg = _cfg("dataset.label_key=celltype_annotation", "qc.min_genes_per_cell=20",
               "qc.min_cells_per_gene=20", "qc.min_cells_per_type=20")
    mem, got = _both(path, cfg, tmp_path, chunk_size=211)
    with H5adFile(path) as h5:  # uns (e.g. the simulated atlas's coarse groups) on request
        assert h5.uns["celltype_groups"] == ad.read_h5ad(path).uns["celltype_groups"]
    steps = {s["step"]: s["cells_removed"] for s in preprocess(
        ad.read_h5ad(path), cfg.dataset, cfg.qc, cfg.split, seed=3)[1].steps}
    assert steps["predicted doublets"] > 0 and steps["uninformative labels"] > 0
    _assert_same(mem, got)


def _toy(n=400, g=120, seed=0) -> tuple[sp.csr_matrix, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(["a", "b", "c", "d"], n // 4)
    mu = rng.gamma(1.0, 2.0, (4, g))
    x = rng.poisson(mu[np.searchsorted(["a", "b", "c", "d"], labels)]).astype(np.float32)
    obs = pd.DataFrame({"cell_type": pd.Categorical(labels)}, index=[f"c{i}" for i in range(n)])
    var = pd.DataFrame(index=[f"MT-{i}" if i < 3 else f"G{i}" for i in range(g)])
    return sp.csr_matrix(x), obs, var


def _lognorm(x: sp.csr_matrix) -> sp.csr_matrix:
    out = sp.csr_matrix(sp.diags(1e4 / np.maximum(x.sum(axis=1).A1, 1)) @ x, dtype=np.float32)
    out.data = np.log1p(out.data)
    return out


@pytest.mark.parametrize("where", ["layers/counts", "raw.X", "none"])
def test_counts_in_layers_raw_or_absent(tmp_path, where):
    x, obs, var = _toy()
    a = ad.AnnData(_lognorm(x), obs=obs, var=var)
    if where == "layers/counts":
        a.layers["counts"] = x
    elif where == "raw.X":
        a.raw = ad.AnnData(x, obs=obs, var=var)
    path = tmp_path / "in.h5ad"
    a.write_h5ad(path)
    with H5adFile(path) as h5:
        assert io.find_counts(h5).counts == (None if where == "none" else where)
    cfg = _cfg("qc.min_genes_per_cell=10", "qc.min_cells_per_gene=5")
    mem, got = _both(path, cfg, tmp_path, chunk_size=37)
    _assert_same(mem, got)
    with PreprocessedStore(tmp_path / "pre.h5ad") as store:
        assert store.has_counts == (where != "none")


def test_row_store_reads_like_memory(tmp_path):
    x, obs, var = _toy(n=300)
    path = tmp_path / "in.h5ad"
    ad.AnnData(x, obs=obs, var=var).write_h5ad(path)
    rows = np.sort(np.random.default_rng(0).choice(300, 57, replace=False))
    with h5py.File(path) as f:
        store = RowStore(f["X"], "X")
        assert _same_csr(store[10:50], x[10:50]) and _same_csr(store[rows], x[rows])
        chunks = list(store.chunks(64, rows))
        assert _same_csr(sp.vstack([b for _, b in chunks], format="csr"), x[rows])
        assert np.array_equal(np.concatenate([rows[s] for s, _ in chunks]), rows)
    dense = tmp_path / "dense.h5ad"
    ad.AnnData(x.toarray(), obs=obs, var=var).write_h5ad(dense)
    with h5py.File(dense) as f:
        assert _same_csr(RowStore(f["X"], "X")[rows], x[rows])
    # a CSR written chunk by chunk reads back with anndata, backed or not
    with h5py.File(tmp_path / "w.h5", "w") as f:
        w = CSRWriter(f, "X", x.shape[1])
        for start in range(0, 300, 70):
            w.append(x[start : start + 70])
    with h5py.File(tmp_path / "w.h5") as f:
        assert _same_csr(RowStore(f["X"], "X")[:], x)


def test_bad_files(tmp_path, kang_path, monkeypatch):
    from cellsynth.data import store

    x, obs, var = _toy()
    cfg = _cfg("qc.min_genes_per_cell=10", "qc.min_cells_per_gene=5")
    csc = tmp_path / "csc.h5ad"
    ad.AnnData(sp.csc_matrix(x), obs=obs, var=var).write_h5ad(csc)
    with h5py.File(csc) as f:  # a valid h5ad stored by genes: read whole, turned into rows
        assert _same_csr(RowStore(f["X"], "X")[:], x)
    monkeypatch.setattr(store, "MAX_CSC_VALUES", 10)  # beyond the cap: refused, with the fix
    with pytest.raises(DataError, match=r"csc_matrix of [\d,]+ values \(more than 10 .*rewrite "
                                        "it as CSR"):
        preprocess_backed(csc, cfg.dataset, cfg.qc, cfg.split, out_path=tmp_path / "o.h5ad")
    monkeypatch.undo()
    bad = x.copy()
    bad.data[-1] = np.nan
    nan = tmp_path / "nan.h5ad"
    ad.AnnData(bad, obs=obs, var=var).write_h5ad(nan)
    with pytest.raises(DataError, match="NaN"):
        preprocess_backed(nan, cfg.dataset, cfg.qc, cfg.split, out_path=tmp_path / "o.h5ad",
                          chunk_size=50)
    with pytest.raises(DataError, match="not written by preprocess_backed"):
        PreprocessedStore(kang_path)
    with pytest.raises(DataError, match="does not exist"):
        preprocess_backed(tmp_path / "nope.h5ad", cfg.dataset, cfg.qc, cfg.split,
                          out_path=tmp_path / "o.h5ad")
    with pytest.raises(DataError, match="is the input file"):
        preprocess_backed(nan, cfg.dataset, cfg.qc, cfg.split, out_path=nan)
    assert not (tmp_path / "o.h5ad").exists() and not (tmp_path / "o.h5ad.part").exists()


def test_memory_stays_near_a_chunk(tmp_path, monkeypatch):
    """Peak traced allocation of the chunked path is a fraction of the matrix; in memory, more."""
    # the count probe reads a fixed number of values (1M: 8 MB however large the atlas):
    # shrink it so that this small file measures the chunks
    monkeypatch.setattr(io, "_PROBE_VALUES", 20_000)
    path = write_atlas(tmp_path / "atlas.h5ad", 10_000, 2000, 5, seed=1, chunk_size=5000)
    with h5py.File(path) as f:
        matrix_bytes = f["X/data"].shape[0] * 8  # float32 values + int32 indices
    cfg = _cfg("dataset.label_key=celltype_annotation", "qc.min_genes_per_cell=20",
               "qc.min_cells_per_gene=10")
    tracemalloc.start()
    try:
        preprocess_backed(path, cfg.dataset, cfg.qc, cfg.split, out_path=tmp_path / "pre.h5ad",
                          chunk_size=250)
        _, chunked_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        preprocess(ad.read_h5ad(path), cfg.dataset, cfg.qc, cfg.split)
        _, memory_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert memory_peak > matrix_bytes  # the measure sees the whole matrix when it is loaded
    assert chunked_peak < 0.35 * matrix_bytes, (chunked_peak, matrix_bytes)
