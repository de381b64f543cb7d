"""Faults of the sweep of varied h5ad inputs (sweep41a) in how counts and gene names are read:
two count matrices that differ, advice for non-integer "counts" that led nowhere, wrong numbers
in two messages, gene annotation lost by generated cells, blank gene names."""

from __future__ import annotations

import json
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellsynth.cells import for_training
from cellsynth.data.io import check_gene_names, find_counts, read, training_source
from cellsynth.errors import DataError
from cellsynth.models.nb import NegBinBaseline

LABEL = "cell_type"
TYPES = ("B cell", "NK cell", "T cell")


def make_adata(n_cells: int = 90, n_genes: int = 30, seed: int = 0) -> ad.AnnData:
    """Poisson counts (CSR) of three types in equal parts, unique cell and gene names."""
    rng = np.random.default_rng(seed)
    x = rng.poisson(3.0, size=(n_cells, n_genes)).astype(np.float32)
    obs = pd.DataFrame({LABEL: pd.Categorical([TYPES[i % 3] for i in range(n_cells)])},
                       index=[f"cell_{i}" for i in range(n_cells)])
    return ad.AnnData(X=sp.csr_matrix(x), obs=obs,
                      var=pd.DataFrame(index=[f"gene_{j}" for j in range(n_genes)]))


def two_counts() -> ad.AnnData:
    """X holds counts, layers['counts'] other counts (X's halved, rounded down)."""
    a = make_adata()
    layer = a.X.copy()
    layer.data = np.floor(layer.data / 2)
    layer.eliminate_zeros()
    a.layers["counts"] = layer
    return a


# --- 3: one rule for where the counts are -------------------------------------------------------


def test_x_and_a_different_counts_layer_every_reader_uses_the_layer_and_says_so(tmp_path, caplog):
    from cellsynth.evaluation.inputs import _read_side

    a = two_counts()
    layer = a.layers["counts"].toarray()
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        assert find_counts(a).counts == "layers/counts"  # run's QC, evaluate, predict_types
    assert "both hold raw counts, but different ones" in caplog.text
    assert "using layers['counts']" in caplog.text
    assert "dataset.is_normalised = false" in caplog.text  # how to choose X instead
    x, _ = training_source(a)  # fit, cs.CVAE, every generator's intake
    assert x is a.layers["counts"]
    side = _read_side(a, LABEL, lambda labels: np.arange(len(labels)), "real cells")
    assert side.where == "layers/counts"
    np.testing.assert_array_equal(side.counts.toarray(), layer)
    in_memory = for_training(a, LABEL, seed=0)
    np.testing.assert_array_equal(in_memory.counts.take(np.arange(a.n_obs)).toarray(), layer)
    path = tmp_path / "two.h5ad"
    a.write_h5ad(path)
    with for_training(path, LABEL, seed=0, backed=True) as on_disk:  # read by rows
        np.testing.assert_array_equal(np.asarray(on_disk.counts.take(np.arange(a.n_obs)).todense()),
                                      layer)
    assert find_counts(a, is_normalised=False).counts == "X"  # the setting that picks X


def test_the_same_counts_in_x_and_the_layer_are_not_warned_about(caplog):
    a = make_adata()
    a.layers["counts"] = a.X.copy()
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        assert find_counts(a).counts == "layers/counts"
        training_source(a)
    assert "different ones" not in caplog.text


# --- 5: advice that leads to counts where counts are needed -------------------------------------


def test_counts_plus_a_constant_are_named_an_offset_not_unlogged_normalised_values(tmp_path):
    a = make_adata()
    a.X[0, 0] = 1890.0  # a large count: the values are above any log-normalised value
    a.X.data = a.X.data + 0.5
    expr = find_counts(a)
    assert expr.counts is None
    assert "plus a constant 0.5" in expr.note and "adata.X.data -= 0.5" in expr.note
    assert "log1p" not in expr.for_counts()
    with pytest.raises(DataError) as info:
        NegBinBaseline().fit(a, LABEL)
    assert "subtract it" in str(info.value) and "log1p" not in str(info.value)


def test_unlogged_normalised_values_get_counts_only_advice_where_counts_are_needed():
    from cellsynth.evaluation.inputs import _counts_where

    a = make_adata()
    totals = np.asarray(a.X.sum(axis=1))
    a.X = sp.csr_matrix(a.X.multiply(1e6 / totals))  # counts per million, never logged
    expr = find_counts(a)
    assert "sc.pp.log1p" in expr.note  # normalised values alone are enough for some readers
    for err in (lambda: training_source(a), lambda: NegBinBaseline().fit(a, LABEL),
                lambda: _counts_where(a, "real cells", "AnnData")):
        with pytest.raises(DataError) as info:
            err()
        message = str(info.value)
        assert "log1p" not in message and "give the unnormalised counts" in message, message


# --- 6: numbers that say what is wrong ----------------------------------------------------------


def test_a_few_fractional_values_among_many_are_counted_not_rounded_to_zero_percent():
    a = make_adata(n_cells=1_000, n_genes=300)
    a.X = sp.csr_matrix(np.ones((1_000, 300), dtype=np.float32))  # 300,000 stored values
    a.X.data[:5] += 0.5
    note = find_counts(a).note
    assert "5 of 300,000 non-zero values sampled (0.002%) are not whole numbers" in note, note
    assert "0.00%" not in note


def test_raw_genes_in_another_order_or_another_set_are_said_as_such(caplog):
    a = make_adata()
    counts = a.copy()
    a.X = sp.csr_matrix(np.log1p(a.X.toarray()))
    a.raw = counts[:, ::-1].copy()  # the same genes, reversed
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        assert find_counts(a).counts == "raw.X"
    assert "the same 30 genes as X in another order" in caplog.text
    with pytest.raises(DataError) as info:
        NegBinBaseline().fit(a, LABEL)
    assert "another order" in str(info.value) and "30 genes where X has 30" not in str(info.value)
    caplog.clear()
    a.raw = counts.copy()
    b = a[:, 5:].copy()  # X a subset of raw's genes
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        assert find_counts(b).counts == "raw.X"
    assert "30 genes where X has 25: 5 only in raw.X ('gene_0', 'gene_1', 'gene_2'" in caplog.text


# --- 7: generated cells keep the training data's gene annotation --------------------------------


def ensembl() -> ad.AnnData:
    """Ensembl-like IDs as var_names, symbols in var['gene_symbols'] (one missing), and a
    numeric column (a statistic of the cells, not annotation)."""
    a = make_adata()
    a.var["gene_symbols"] = pd.Categorical([f"SYM{j}" for j in range(a.n_vars)])
    a.var["feature_types"] = ["Gene Expression"] * (a.n_vars - 1) + [None]
    a.var["means"] = np.arange(a.n_vars, dtype=float)
    a.var_names = [f"ENSG{j:011d}" for j in range(a.n_vars)]
    return a


def assert_annotated(syn: ad.AnnData, genes: list[str]) -> None:
    assert list(syn.var_names) == genes
    assert list(syn.var["gene_symbols"].astype(str)) == [f"SYM{j}" for j in range(len(genes))]
    assert syn.var["feature_types"].isna().sum() == 1
    assert "means" not in syn.var.columns


def test_the_nb_generator_keeps_the_gene_symbols_through_save_and_load(tmp_path):
    a = ensembl()
    model = NegBinBaseline()
    model.fit(a, LABEL)
    assert_annotated(model.sample({"B cell": 5}, seed=0), list(a.var_names))
    model.save(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "var.json").read_text())
    assert saved["gene_symbols"][:2] == ["SYM0", "SYM1"] and saved["feature_types"][-1] is None
    loaded = NegBinBaseline.load(tmp_path / "m")
    syn = loaded.sample({"B cell": 5}, seed=0)
    assert_annotated(syn, list(a.var_names))
    syn.write_h5ad(tmp_path / "syn.h5ad")  # an h5ad holds the columns
    assert_annotated(ad.read_h5ad(tmp_path / "syn.h5ad"), list(a.var_names))


def test_the_cvae_keeps_the_gene_symbols_in_memory_on_disk_and_from_cellsynth_generate(tmp_path):
    from cellsynth.cli import main
    from cellsynth.config import CVAEConfig
    from cellsynth.models.cvae import CVAE

    a = ensembl()
    x = a.X.toarray()
    x[:, 3] = 0  # a gene without counts: left out with its annotation (drop_undetected)
    a.X = sp.csr_matrix(x)
    cells = for_training(a, LABEL, seed=0, drop_undetected=True)
    assert len(cells.annotation) == a.n_vars - 1 and "SYM3" not in set(cells.annotation["gene_symbols"])
    a = ensembl()
    model = CVAE(config=CVAEConfig(n_hidden=[16], n_latent=4, n_embed=4, max_epochs=1,
                                   device="cpu", select="elbo", min_steps=0))
    model.fit(a, LABEL, seed=0)
    assert_annotated(model.sample({"NK cell": 4}, seed=0), list(a.var_names))
    model.save(tmp_path / "m")
    assert_annotated(CVAE.load(tmp_path / "m").sample({"NK cell": 4}, seed=0), list(a.var_names))
    out = tmp_path / "syn.h5ad"
    assert main(["generate", str(tmp_path / "m"), "--n-per-type", "3", "--out", str(out),
                 "--quiet"]) == 0  # written chunk by chunk
    assert_annotated(ad.read_h5ad(out), list(a.var_names))


def test_the_scvi_generator_keeps_the_gene_symbols(tmp_path):
    pytest.importorskip("scvi")
    from cellsynth.config import ScviConfig
    from cellsynth.models.scvi import ScviGenerator

    a = ensembl()
    model = ScviGenerator(ScviConfig(n_hidden=16, n_latent=4, max_epochs=1, batch_size=128))
    model.fit(a, LABEL, seed=0)
    assert_annotated(model.sample({"T cell": 3}, seed=0), list(a.var_names))
    model.save(tmp_path / "m")
    assert_annotated(ScviGenerator.load(tmp_path / "m").sample({"T cell": 3}, seed=0),
                     list(a.var_names))


def test_a_damaged_annotation_file_is_named(tmp_path):
    from cellsynth.errors import ModelFileError

    model = NegBinBaseline()
    model.fit(ensembl(), LABEL)
    model.save(tmp_path / "m")
    (tmp_path / "m" / "var.json").write_text(json.dumps({"gene_symbols": ["A"]}))
    with pytest.raises(ModelFileError, match=r"var\.json must hold one list of 30"):
        NegBinBaseline.load(tmp_path / "m")


# --- 8: blank gene names ------------------------------------------------------------------------


@pytest.mark.parametrize("blank", ["", "   "])
def test_an_empty_or_blank_gene_name_is_refused_with_its_position(tmp_path, blank):
    with pytest.raises(DataError) as info:
        check_gene_names(["a", blank, "c", blank + " "])
    message = str(info.value)
    assert "\n" not in message
    assert "2 gene name(s) that are empty or only spaces (at position(s) 1, 3" in message
    assert "adata.var_names.str.strip() != ''" in message  # the fix
    a = make_adata()
    a.var_names = ["gene_0", "gene_1", "gene_2", blank, *a.var_names[4:]]
    with pytest.raises(DataError, match=r"position\(s\) 3 of var_names"):
        NegBinBaseline().fit(a, LABEL)
    a.write_h5ad(tmp_path / "blank.h5ad")
    with pytest.raises(DataError, match="empty or only spaces"):
        read(tmp_path / "blank.h5ad")


def test_a_run_s_preprocessed_data_keep_the_gene_symbols_in_memory_and_out_of_core(tmp_path):
    """`cellsynth run` trains on the preprocessed data: its var carries the source's text
    columns for the genes QC kept, in memory and out of core alike, and a model fitted on it
    keeps them."""
    from cellsynth import config
    from cellsynth.data.chunked import PreprocessedStore, preprocess_backed
    from cellsynth.data.qc import preprocess

    a = ensembl()
    a.write_h5ad(tmp_path / "a.h5ad")
    cfg = config.load(None, [f'dataset.label_key="{LABEL}"', "qc.min_genes_per_cell=1",
                             "qc.min_cells_per_gene=1"])
    mem, _ = preprocess(a.copy(), cfg.dataset, cfg.qc, cfg.split, seed=0)
    out, _ = preprocess_backed(tmp_path / "a.h5ad", cfg.dataset, cfg.qc, cfg.split, seed=0,
                               out_path=tmp_path / "pre.h5ad", chunk_size=7)
    disk = ad.read_h5ad(out)
    for pre in (mem, disk):
        kept = [int(g[4:]) for g in pre.var_names]
        assert list(pre.var["gene_symbols"].astype(str)) == [f"SYM{j}" for j in kept]
        assert "means" not in pre.var.columns
    with PreprocessedStore(out) as store:
        assert store.n_vars == disk.n_vars
    model = NegBinBaseline()
    model.fit(mem, LABEL)
    syn = model.sample({"B cell": 3}, seed=0)
    assert list(syn.var["gene_symbols"].astype(str)) == list(mem.var["gene_symbols"].astype(str))


def test_a_run_on_counts_plus_an_offset_is_not_told_to_read_them_as_log_normalised():
    """The run's refusal of X that is neither counts nor log-normalised values gave, after
    every note, "set dataset.is_normalised = true to use X as the log-normalised values it is":
    wrong for counts plus a pseudo-count. The setting is offered only as an override of a
    wrong guess."""
    from cellsynth import config
    from cellsynth.data.qc import preprocess

    a = make_adata()
    a.X = a.X.toarray() + 0.5
    cfg = config.load(None, [f'dataset.label_key="{LABEL}"'])
    with pytest.raises(DataError) as err:
        preprocess(a, cfg.dataset, cfg.qc, cfg.split, seed=0)
    text = str(err.value)
    assert "plus a constant 0.5" in text and "subtract it" in text
    assert "log-normalised values it is" not in text
    assert "Only if X does hold log-normalised values after all" in text
