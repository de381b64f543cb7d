"""Input matrices as users hand them over (session 49's sweep): values that are not numbers
(text, Python objects, complex numbers), a CSR storing a cell's gene in several entries, in
memory and read from disk by fit, run's QC and evaluate. Each test fails without its fix."""

from __future__ import annotations

import re
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import cellsynth as cs
from cellsynth.cells import for_training
from cellsynth.config import RunConfig
from cellsynth.data.chunked import preprocess_backed
from cellsynth.data.qc import preprocess
from cellsynth.errors import DataError


def _atlas(n: int = 90, genes: int = 60, seed: int = 0) -> ad.AnnData:
    """Poisson counts of three types (CSR), each with its own block of raised genes."""
    rng = np.random.default_rng(seed)
    types = np.arange(n) % 3
    rate = np.full((n, genes), 2.0)
    for k in range(3):
        rate[types == k, k * 5 : k * 5 + 5] = 20.0
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"type {k}" for k in types])},
                       index=[f"cell{seed}_{i}" for i in range(n)])
    return ad.AnnData(sp.csr_matrix(rng.poisson(rate).astype(np.float32)), obs=obs,
                      var=pd.DataFrame(index=[f"g{j}" for j in range(genes)]))


@pytest.mark.parametrize(("dtype", "said"), [(object, "Python objects"),
                                             (np.complex64, "complex numbers")])
def test_values_that_are_not_numbers_are_refused_in_memory(dtype, said: str) -> None:
    """An X of Python objects (a table's values with a text column) or of complex numbers
    stopped fit and evaluate with numpy's TypeError traceback."""
    a = _atlas()
    a.X = a.X.toarray().astype(dtype)
    match = rf"X holds {said} \(dtype .*\), not numbers: .*astype\(np.float32\)"
    with pytest.raises(DataError, match=match):
        for_training(a, "cell_type", seed=0)
    with pytest.raises(DataError, match=match):
        cs.NegBinBaseline(a).train()
    with pytest.raises(DataError, match=rf"the real data \(AnnData\): {match}"):
        cs.evaluate(a, _atlas(seed=1), label_key="cell_type", gene_repeats=1)


def test_values_that_are_not_numbers_are_refused_on_disk(tmp_path: Path) -> None:
    """A file of complex counts (sparse) or of text (dense) was read from disk as float32:
    the imaginary parts dropped and the text parsed, and the model trained on them."""
    a = _atlas()
    path = tmp_path / "complex.h5ad"
    a.write_h5ad(path)
    with h5py.File(path, "r+") as f:
        values = f["X/data"][:]
        del f["X/data"]
        f["X"].create_dataset("data", data=values.astype(np.complex64))
    with pytest.raises(DataError, match=r"X holds complex numbers \(dtype complex64\)"):
        for_training(path, "cell_type", seed=0, backed=True)
    with pytest.raises(DataError, match=r"X holds complex numbers"):
        cs.evaluate(path, _atlas(seed=1), label_key="cell_type", gene_repeats=1)
    b = a.copy()
    b.X = b.X.toarray()
    text = tmp_path / "text.h5ad"
    b.write_h5ad(text)
    with h5py.File(text, "r+") as f:
        attrs = dict(f["X"].attrs)
        del f["X"]
        f.create_dataset("X", data=b.X.astype(str).astype(bytes)).attrs.update(attrs)
    with pytest.raises(DataError, match=r"X holds text \(dtype \|S\d+\), not numbers"):
        for_training(text, "cell_type", seed=0, backed=True)



def _split_entries(a: ad.AnnData, first: float = 1.0) -> ad.AnnData:
    """``a`` with each count above 1 stored as two entries of the same cell and gene
    (``first`` and the rest): a valid CSR, not canonical, as a file written from triplets
    may hold."""
    x = a.X.tocoo()
    twice = x.data > 1
    rows = np.concatenate([x.row, x.row[twice]])
    cols = np.concatenate([x.col, x.col[twice]])
    vals = np.concatenate([np.where(twice, first, x.data), x.data[twice] - first])
    order = np.lexsort((cols, rows))
    indptr = np.searchsorted(rows[order], np.arange(a.n_obs + 1))
    split = sp.csr_matrix((vals[order].astype(np.float32), cols[order], indptr), shape=a.shape)
    assert not split.has_canonical_format and split.nnz > x.nnz
    out = a.copy()
    out.X = split
    return out


@pytest.mark.parametrize("backed", [False, True])
def test_a_gene_stored_twice_in_a_cell_is_one_count_in_qc(tmp_path: Path, backed: bool) -> None:
    """A run's QC read each stored entry as a gene of its own: the genes a cell detects
    counted twice (cells then outliers of their type) and log1p taken of each part (66 of
    80 genes left out by the variance filter on a small atlas), in memory and out of core."""
    cfg = RunConfig()
    cfg.qc.min_genes_per_cell, cfg.qc.min_cells_per_gene = 5, 3
    a = _atlas()
    b = _split_entries(a)
    if backed:
        a.write_h5ad(tmp_path / "a.h5ad")
        b.write_h5ad(tmp_path / "b.h5ad")
        want, got = (ad.read_h5ad(preprocess_backed(tmp_path / f"{n}.h5ad", cfg.dataset, cfg.qc,
                                                    cfg.split, seed=0,
                                                    out_path=tmp_path / f"pre_{n}.h5ad")[0])
                     for n in "ab")
    else:
        want, got = (preprocess(d, cfg.dataset, cfg.qc, cfg.split, seed=0)[0] for d in (a, b))
    assert got.obs_names.equals(want.obs_names) and got.var_names.equals(want.var_names)
    np.testing.assert_array_equal(got.obs["n_genes"], want.obs["n_genes"])
    np.testing.assert_array_equal(got.X.toarray(), want.X.toarray())


def test_a_count_stored_as_two_parts_is_one_whole_count_for_fit_and_evaluate(
        tmp_path: Path) -> None:
    """A count stored in two entries of the same cell and gene (0.5 and the rest) was refused
    as fractional by a fit and by evaluate, though the cell's count of the gene is whole; the
    counts read hold one entry per cell and gene, in memory and from disk."""
    a = _atlas()
    b = _split_entries(a, first=0.5)
    b.write_h5ad(tmp_path / "b.h5ad")
    for data, backed in ((b, False), (tmp_path / "b.h5ad", True)):
        cells = for_training(data, "cell_type", seed=0, backed=backed)
        x = cells.counts.rows(0, cells.n_obs)
        assert x.has_canonical_format and x.nnz == a.X.nnz
        np.testing.assert_array_equal(x.toarray(), a.X.toarray())
        cells.close()
    synthetic = _atlas(seed=1)
    want = cs.evaluate(a, synthetic, label_key="cell_type", gene_repeats=1)
    for data in (b, tmp_path / "b.h5ad"):
        got = cs.evaluate(data, synthetic, label_key="cell_type", gene_repeats=1)
        assert got.verdict == want.verdict


@pytest.mark.parametrize("backed", ["false", "true"])
def test_a_run_on_counts_in_a_layer_of_another_name_points_to_it_before_qc(
        tmp_path: Path, backed: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """A run on log-normalised X with the counts in layers['umi'] said only that the data hold
    normalised values (fit and evaluate name the layer), after the whole QC; and with
    dataset.is_normalised = true over counts in X, that the data hold normalised values. Now
    both are said before any QC step, each with its fix."""
    from cellsynth import cli

    def qc_ran(*args, **kwargs):
        raise AssertionError("the QC ran")

    monkeypatch.setattr("cellsynth.data.qc.filter_cells", qc_ran)
    monkeypatch.setattr("cellsynth.data.chunked.filter_cells", qc_ran)
    a = _atlas()
    a.layers["umi"] = a.X.copy()
    a.X = sp.csr_matrix(np.log1p(a.X.toarray()).astype(np.float32))
    path = tmp_path / "umi.h5ad"
    a.write_h5ad(path)
    run = ["run", str(path), "--out", str(tmp_path / "run"), "--quiet", "--set",
           f"dataset.backed={backed}"]
    assert cli.main(run) == 2
    err = capsys.readouterr().err
    assert "generator.model = 'cvae' generates counts and needs raw counts" in err
    assert "layers['umi'] holds whole numbers: if they are the raw counts, name that layer " \
           "'counts' (adata.layers['counts'] = adata.layers['umi']" in err
    counts = tmp_path / "counts.h5ad"
    _atlas().write_h5ad(counts)
    told = ["run", str(counts), "--out", str(tmp_path / "told"), "--quiet", "--set",
            f"dataset.backed={backed}", "--set", "dataset.is_normalised=true"]
    assert cli.main(told) == 2
    assert ("dataset.is_normalised = true reads X as normalised values, and neither "
            "layers['counts'] nor raw.X holds counts: if X holds the raw counts, set "
            "dataset.is_normalised = \"auto\"") in capsys.readouterr().err


def test_a_dense_matrix_on_disk_is_never_read_whole_into_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dense X on disk (older files, or written so) was read 20,000 rows at once to judge
    its values and a chunk (qc.chunk_size, 10,000 rows) at once as a dense array: 4 GB and
    2 GB for 50,000 genes, whatever chunk the QC held in memory. Now a few rows are judged
    and a chunk is read in blocks of bounded size, kept as CSR."""
    import tracemalloc

    from cellsynth.data import store
    from cellsynth.data.io import find_counts
    from cellsynth.data.store import H5adFile

    rng = np.random.default_rng(0)
    n, genes = 2000, 2000
    dense = ((rng.random((n, genes)) < 0.05) * rng.integers(1, 5, (n, genes))).astype(np.float32)
    obs = pd.DataFrame({"cell_type": pd.Categorical(np.arange(n) % 3)},
                       index=[f"c{i}" for i in range(n)])
    path = tmp_path / "dense.h5ad"
    ad.AnnData(dense, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(genes)])
               ).write_h5ad(path)
    monkeypatch.setattr(store, "_DENSE_VALUES", 1 << 16, raising=False)
    whole = dense.nbytes  # 16 MB
    with H5adFile(path) as h5:
        tracemalloc.start()
        try:
            expr = find_counts(h5)
            probe = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            x, _ = h5.matrix(expr)
            read = [block for _, block in x.chunks(n)]
            chunk = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert expr.counts == "X"
    assert probe < whole / 4, f"judging the values took {probe / 1e6:.1f} MB"
    assert chunk < whole / 2, f"a chunk took {chunk / 1e6:.1f} MB"
    np.testing.assert_array_equal(read[0].toarray(), dense)


def test_evaluate_refuses_normalised_cells_after_the_first_million_values() -> None:
    """Real cells of which the last batch was log-normalised (an atlas joined from two
    sources) were compared as counts when the first million values read were whole: the
    fractional cells went into the verdict without a word."""
    rng = np.random.default_rng(0)
    n, genes = 1000, 1500
    x = rng.poisson(3.0, size=(n, genes)).astype(np.float32)
    assert np.count_nonzero(x[:-100]) > 1_000_000  # the first million values: counts
    last = x[-100:]
    x[-100:] = np.log1p(last / last.sum(1, keepdims=True) * 1e4)
    obs = pd.DataFrame({"cell_type": pd.Categorical(np.arange(n) % 3)},
                       index=[f"c{i}" for i in range(n)])
    real = ad.AnnData(sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in
                                                                           range(genes)]))
    with pytest.raises(DataError, match=r"the real data \(AnnData\) holds non-integer values "
                                        r"in X \(in 100 of the 1,000 cells read; e\.g\. "):
        cs.evaluate(real, _atlas(seed=1), label_key="cell_type", gene_repeats=1)


def test_predict_types_refuses_normalised_cells_among_counts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counts whose last cells were log-normalised (a file larger than the million values
    find_counts looks at) were normalised again and given a type read from values at another
    scale, without a word."""
    from test_classify_faults48 import _make_run

    cells = cs.simulate(240, 60, 3, seed=0)
    run = _make_run(tmp_path, cells, cells.obs["cell_type"].astype(str).to_numpy())
    monkeypatch.setattr("cellsynth.data.io._PROBE_VALUES", 1000)  # as a large file's first rows
    x = cells.X.toarray().astype(np.float32)
    last = x[-20:]
    x[-20:] = np.log1p(last / last.sum(1, keepdims=True) * 1e4)
    mixed = cells.copy()
    mixed.X = sp.csr_matrix(x)
    first = repr(str(cells.obs_names[-20]))
    with pytest.raises(DataError, match=rf"predict_types: X was taken as raw counts .* but 20 "
                                        rf"of the 240 cells hold non-integer values \(the "
                                        rf"first {first}"):
        cs.predict_types(mixed, run)
    assert len(cs.predict_types(cells.copy(), run)) == 240  # counts throughout: as before


@pytest.mark.parametrize(("damage", "said"), [
    ("a gene index past the genes", r"X is damaged \(rows 0 to 89\): it stores an index of "
                                    r"500, outside 0 to 59"),
    ("a row pointer that decreases", r"X is damaged: its row pointer decreases"),
    ("a row pointer past the values", r"X is damaged: its row pointer decreases"),
    ("fewer genes in X than in var", r"X is 90 x 50, but the file has 90 cells x 60 genes"),
])
def test_a_damaged_sparse_matrix_is_refused_not_crashed_on(tmp_path: Path, damage: str,
                                                           said: str) -> None:
    """A file whose CSR index arrays do not hold together (cut short, or written by a faulty
    tool) stopped fit, run and evaluate with numpy's ValueError or scipy's RuntimeError
    tracebacks, or a segmentation fault (a row pointer past the values), in memory and on
    disk: scipy checks only the arrays' lengths when it builds a matrix."""
    path = tmp_path / "damaged.h5ad"
    _atlas().write_h5ad(path)
    with h5py.File(path, "r+") as f:
        if damage == "a gene index past the genes":
            f["X/indices"][5] = 500
        elif damage == "a row pointer that decreases":
            f["X/indptr"][3] = 2
        elif damage == "a row pointer past the values":
            f["X/indptr"][3] = 10**7
        else:
            f["X"].attrs["shape"] = np.array([90, 50])
    on_disk = re.escape(str(path)) + ": " + said
    with pytest.raises(DataError, match=on_disk):
        for_training(path, "cell_type", seed=0, backed=True)
    with pytest.raises(DataError, match=on_disk):
        cs.evaluate(path, _atlas(seed=1), label_key="cell_type", gene_repeats=1)
    if damage != "fewer genes in X than in var":  # anndata's own reader refuses that one
        in_memory = said.replace(r" \(rows 0 to 89\)", "")
        with pytest.raises(DataError, match=re.escape(str(path)) + ": " + in_memory):
            for_training(path, "cell_type", seed=0, backed=False)
        a = ad.read_h5ad(path)  # an AnnData built in Python from such arrays
        with pytest.raises(DataError, match=r"the data: " + in_memory):
            for_training(a, "cell_type", seed=0)


def test_cs_run_names_a_matrix_of_objects_before_writing_the_anndata(tmp_path: Path) -> None:
    """cs.run(adata) with an X of Python objects: anndata's writer failed, and the run said
    an obs column of mixed types or uns keys were at fault."""
    a = _atlas()
    a.X = a.X.toarray().astype(object)
    with pytest.raises(DataError, match=r"the AnnData's X holds Python objects \(dtype object"):
        cs.run(a, out=tmp_path / "run")
    assert not (tmp_path / "run" / "input.h5ad").exists()


def test_info_says_a_damaged_matrix_is_damaged(tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    """cellsynth info on a file whose row pointer decreases described its X as raw counts
    (and, once entries stored twice were summed, crashed in scipy's sort): a damaged
    matrix is checked before scipy's compiled code reads it."""
    from cellsynth import cli

    path = tmp_path / "damaged.h5ad"
    _atlas().write_h5ad(path)
    with h5py.File(path, "r+") as f:
        f["X/indptr"][3] = 10**7
    assert cli.main(["info", str(path)]) == 0
    assert "X: not expression values (the sparse matrix is damaged: its row pointer " \
           "decreases" in capsys.readouterr().out


def test_the_checks_of_a_view_read_its_parent_s_matrices_without_copying_them() -> None:
    """The structure check of an AnnData's matrices (33d24bf) read a view's X and each layer,
    which anndata copies for a view: a subset of a large atlas held twice to be checked.
    A view's parent is checked instead, a damaged one refused as such."""
    import tracemalloc

    from cellsynth.data.io import check_shape

    x = sp.random(4000, 500, density=0.1, format="csr", dtype=np.float32, random_state=0)
    a = ad.AnnData(x, layers={"counts": x.copy(), "spliced": x.copy()})
    view = a[:3000]
    tracemalloc.start()
    try:
        check_shape(view)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < x.data.nbytes / 4, f"checking the view took {peak / 1e6:.1f} MB"
    bad = a.copy()
    bad.X.indices[5] = 900
    with pytest.raises(DataError, match=r"X is damaged: it stores an index of 900"):
        check_shape(bad[:100])
