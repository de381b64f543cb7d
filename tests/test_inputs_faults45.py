"""Real-world AnnData layouts fed to fit, evaluate and the plots (session 45's sweep): an h5ad
of anndata before 0.7 is read by rows, gene symbols beside Ensembl IDs are named as the fix of a
gene-name mismatch, the matrix a side's counts came from is said, and errors name the side."""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import cellsynth as cs
from cellsynth.cells import for_training
from cellsynth.data.store import H5adFile
from cellsynth.errors import DataError
from cellsynth.evaluation.inputs import _read_side


def _cells(n: int = 60, genes: int = 150, seed: int = 0) -> ad.AnnData:
    """Poisson counts of two types (CSR), gene symbols as var_names."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(["B cells", "T cells"], n // 2)
    means = rng.gamma(1.0, 2.0, size=(2, genes))
    x = rng.poisson(means[(labels == "T cells").astype(int)]).astype(np.float32)
    obs = pd.DataFrame({"cell_type": pd.Categorical(labels)},
                       index=[f"cell{seed}_{i}" for i in range(n)])
    return ad.AnnData(sp.csr_matrix(x), obs=obs,
                      var=pd.DataFrame(index=[f"GENE{j}" for j in range(genes)]))


def _ensembl(a: ad.AnnData, column: str = "gene_symbols") -> ad.AnnData:
    a = a.copy()
    a.var[column] = a.var_names.astype(str)
    a.var_names = [f"ENSG{j:011d}" for j in range(a.n_vars)]
    return a


def _legacy(path: Path, a: ad.AnnData) -> None:
    """``a`` written as anndata 0.6 wrote an h5ad: obs and var as tables, the categories in
    uns, log-normalised values in X and the counts in a top-level raw.X."""
    counts = a.X.toarray()
    logged = np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4)
    text = h5py.string_dtype()
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=logged.astype(np.float32))
        f.create_dataset("raw.X", data=counts)
        cats = a.obs["cell_type"].cat
        f.create_dataset("obs", data=np.array(
            list(zip(a.obs_names, cats.codes.astype(np.int8), strict=True)),
            dtype=[("index", text), ("cell_type", np.int8)]))
        genes = np.array([(g,) for g in a.var_names], dtype=[("index", text)])
        f.create_dataset("var", data=genes)
        f.create_dataset("raw.var", data=genes)
        f.create_group("uns").create_dataset(
            "cell_type_categories", data=np.array(cats.categories, dtype=object), dtype=text)


def test_an_h5ad_of_old_anndata_is_read_by_rows(tmp_path: Path) -> None:
    a = _cells()
    path = tmp_path / "old.h5ad"
    _legacy(path, a)
    with H5adFile(path) as h5:  # read_elem gave record arrays: an AttributeError traceback
        assert h5.obs["cell_type"].astype(str).tolist() == a.obs["cell_type"].astype(str).tolist()
        assert h5.raw is not None and list(h5.raw.var_names) == list(a.var_names)
    side = _read_side(path, "cell_type", lambda labels: np.arange(len(labels)), "the real data")
    assert side.where == "raw.X"  # the counts, not the log-normalised X
    np.testing.assert_array_equal(side.counts.toarray(), a.X.toarray())


def test_symbols_beside_ensembl_ids_are_named_as_the_fix(tmp_path: Path) -> None:
    real, synthetic = _cells(seed=0), _cells(seed=1)
    for r, s, side, col in ((_ensembl(real), synthetic, "real", "gene_symbols"),
                            (real, _ensembl(synthetic, "feature_name"), "synthetic",
                             "feature_name")):
        with pytest.raises(DataError, match=rf"the {side} data's var\['{col}'\] holds 150 of"):
            cs.evaluate(r, s, label_key="cell_type", gene_repeats=1)
    path = tmp_path / "ensembl.h5ad"
    _ensembl(real).write_h5ad(path)  # a file too: its var read beside its counts
    with pytest.raises(DataError, match=r"adata.var_names = adata.var\['gene_symbols'\]"):
        cs.evaluate(path, synthetic, label_key="cell_type", gene_repeats=1)
    with pytest.raises(DataError, match=r"real data's var\['gene_symbols'\]"):
        cs.pl.umap(_ensembl(real), synthetic, label_key="cell_type")


def test_held_out_genes_alike_but_for_case_are_named() -> None:
    train, held = _cells(seed=0), _cells(seed=2)
    synthetic = _cells(seed=1)
    held.var_names = [g.lower() for g in held.var_names]
    with pytest.raises(DataError, match="alike but for case"):
        cs.evaluate(train, synthetic, label_key="cell_type", heldout=held, gene_repeats=1)


def test_a_side_without_any_label_is_said() -> None:
    real, synthetic = _cells(seed=0), _cells(seed=1)
    synthetic.obs["cell_type"] = pd.Categorical([None] * synthetic.n_obs,
                                                categories=["B cells"])
    with pytest.raises(DataError, match="the synthetic data: none of the 60 cells has a label"):
        cs.evaluate(real, synthetic, label_key="cell_type", gene_repeats=1)


def test_too_few_paired_cells_says_how_many() -> None:
    real, synthetic = _cells(seed=0), _cells(seed=1)
    with pytest.raises(DataError, match=r"only 1 real and synthetic cell pair\(s\).*1 synthetic"):
        cs.evaluate(real, synthetic[:1].copy(), label_key="cell_type", gene_repeats=1)


def test_plots_name_the_side_whose_values_are_bad() -> None:
    real, synthetic = _cells(seed=0), _cells(seed=1)
    x = synthetic.X.toarray()
    x[0, 0] = np.nan
    synthetic.X = x
    with pytest.raises(DataError, match=r"^the synthetic data: X holds NaN"):
        cs.pl.library_sizes(real, synthetic, label_key="cell_type")


def test_a_fit_from_disk_says_where_its_counts_are(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    a = _cells()
    a.layers["counts"] = a.X.copy()
    a.X = sp.csr_matrix(np.log1p(a.X.toarray()))
    path = tmp_path / "layer.h5ad"
    a.write_h5ad(path)
    with caplog.at_level(logging.INFO, logger="cellsynth.cells"):
        cells = for_training(path, "cell_type", seed=0, backed=True)
        cells.close()
    assert "training on the raw counts in layers/counts" in caplog.text


def test_evaluate_says_which_matrix_each_side_was_read_from(
        caplog: pytest.LogCaptureFixture) -> None:
    real, synthetic = _cells(120, seed=0), _cells(120, seed=1)
    logged = real.copy()
    logged.raw = real.copy()
    logged.X = sp.csr_matrix(np.log1p(real.X.toarray()))
    with caplog.at_level(logging.INFO, logger="cellsynth.evaluation"):
        ev = cs.evaluate(logged, synthetic, label_key="cell_type", gene_repeats=1)
    assert "raw counts read from real raw.X, synthetic X" in caplog.text
    same = cs.evaluate(real, synthetic, label_key="cell_type", gene_repeats=1)
    assert ev.verdict["overall"] == same.verdict["overall"]  # the counts, not the logged X


def test_real_cells_without_any_count_are_refused() -> None:
    real, synthetic = _cells(seed=0), _cells(seed=1)
    real.X = sp.csr_matrix(real.shape, dtype=np.float32)  # read as "copies of real cells"
    with pytest.raises(DataError, match=r"the real data \(AnnData\) hold no count at all in X"):
        cs.evaluate(real, synthetic, label_key="cell_type", gene_repeats=1)


def test_duplicate_genes_of_raw_counts_are_refused_with_raw_s_fix(tmp_path: Path) -> None:
    a = _cells()
    names = list(a.var_names)
    names[1] = names[0]
    a.var_names = names
    a.raw = a.copy()  # the counts, over genes of which two share a name
    a.X = sp.csr_matrix(np.log1p(a.X.toarray()))
    a.var_names_make_unique()  # X's names unique: only raw's repeat
    fix = r"raw = adata.raw.to_adata\(\); raw.var_names_make_unique\(\); adata.raw = raw"
    with pytest.raises(DataError, match=rf"raw.var_names.*duplicate gene names \('GENE0'\).*{fix}"):
        for_training(a, "cell_type", seed=0)
    with pytest.raises(DataError, match=fix):  # an InvalidIndexError traceback before
        cs.evaluate(a, _cells(seed=1), label_key="cell_type", gene_repeats=1)
    path = tmp_path / "raw.h5ad"
    a.write_h5ad(path)
    with pytest.raises(DataError, match=fix):
        cs.evaluate(path, _cells(seed=1), label_key="cell_type", gene_repeats=1)


def test_types_of_two_cells_say_the_floor_needs_four() -> None:
    real, synthetic = _cells(400, seed=0), _cells(400, seed=1)
    for a in (real, synthetic):  # 200 types of 2 cells
        a.obs["cell_type"] = pd.Categorical([f"type{i // 2}" for i in range(a.n_obs)])
    with pytest.raises(DataError, match="needs a type of at least 4 real cells; give more real "
                                        "cells of each type"):  # not "a larger --max-cells"
        cs.evaluate(real, synthetic, label_key="cell_type", gene_repeats=1)


def test_counts_in_a_layer_of_another_name_are_pointed_to(tmp_path: Path) -> None:
    a = _cells()
    a.layers["raw_counts"] = a.X.copy()
    a.X = sp.csr_matrix(np.log1p(a.X.toarray()))
    hint = r"layers\['raw_counts'\] holds whole numbers: .*adata.layers\['counts'\] = "
    with pytest.raises(DataError, match=hint):  # "normalised values only" before
        for_training(a, "cell_type", seed=0)
    path = tmp_path / "raw_counts.h5ad"
    a.write_h5ad(path)
    with pytest.raises(DataError, match=hint):
        for_training(path, "cell_type", seed=0, backed=True)
    with pytest.raises(DataError, match=rf"the real data \({path}\) holds normalised .*{hint}"):
        cs.evaluate(path, _cells(seed=1), label_key="cell_type", gene_repeats=1)


def test_counts_wrapped_by_a_narrow_integer_type_are_named() -> None:
    a = _cells()
    a.X = (a.X.toarray() * 50).astype(np.int8)  # counts over 127 wrap to negative numbers
    with pytest.raises(DataError, match=r"stored as int8, which holds counts up to 127 only"):
        for_training(a, "cell_type", seed=0)


def test_binarised_expression_is_not_taken_for_counts() -> None:
    """A true/false X (detected or not) was trained on as counts of 0 and 1."""
    import anndata as ad
    import numpy as np
    import pytest
    import scipy.sparse as sp

    from cellsynth.data.io import find_counts
    from cellsynth.errors import DataError

    counts = sp.random(50, 30, density=0.3, format="csr", random_state=0, dtype=np.float32)
    counts.data = np.ceil(counts.data * 5)
    binary = ad.AnnData(sp.csr_matrix(counts > 0))
    with pytest.raises(DataError, match=r"true/false values .* not counts"):
        find_counts(binary)
    binary.layers["counts"] = counts  # the counts beside it: read from there
    assert find_counts(binary).counts == "layers/counts"
