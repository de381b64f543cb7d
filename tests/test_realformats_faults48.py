"""Real public h5ad layouts as users download them (session 48's sweep): a CELLxGENE file
(log-normalised X, counts in raw.X, Ensembl IDs with symbols in var['feature_name']), counts
in a layer, Expression Atlas columns, unannotated cells, through fit, run, evaluate and the
Python API. Each test fails without its fix."""

from __future__ import annotations

import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import cellsynth as cs
from cellsynth.config import RunConfig
from cellsynth.data.qc import preprocess
from cellsynth.errors import DataError


def _atlas(n: int = 80, genes: int = 120, seed: int = 0) -> ad.AnnData:
    """Poisson counts of two types (CSR) named by symbols, the first three mitochondrial."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(["B cell", "T cell"], n // 2)
    means = rng.gamma(1.0, 2.0, size=(2, genes)) + 0.5
    x = rng.poisson(means[(labels == "T cell").astype(int)]).astype(np.float32)
    symbols = [f"MT-CO{j + 1}" if j < 3 else f"GENE{j}" for j in range(genes)]
    obs = pd.DataFrame({"cell_type": pd.Categorical(labels)},
                       index=[f"cell{seed}_{i}" for i in range(n)])
    return ad.AnnData(sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=symbols))


def _lognorm(x: sp.csr_matrix) -> sp.csr_matrix:
    x = sp.csr_matrix(x, dtype=np.float64)
    x = sp.diags(1e4 / np.maximum(np.asarray(x.sum(1)).ravel(), 1)) @ x
    x.data = np.log1p(x.data)
    return sp.csr_matrix(x, dtype=np.float32)


def _cellxgene(a: ad.AnnData, raw_symbols: bool) -> ad.AnnData:
    """``a`` as CELLxGENE serves it: X log-normalised, the counts in raw.X, Ensembl IDs as
    var_names, the symbols in var['feature_name'] (and in raw.var's, with ``raw_symbols``;
    a raw frozen from a counts AnnData has none), unused categories among the cell types."""
    ids = [f"ENSG{j:011d}" for j in range(a.n_vars)]
    symbols = pd.Categorical(a.var_names.astype(str))
    raw_var = pd.DataFrame({"feature_name": symbols} if raw_symbols else {}, index=ids)
    out = ad.AnnData(_lognorm(a.X), obs=a.obs.copy(),
                     var=pd.DataFrame({"feature_name": symbols}, index=ids))
    out.raw = ad.AnnData(a.X.copy(), var=raw_var)
    out.obs["cell_type"] = out.obs["cell_type"].cat.add_categories(["erythrocyte"])
    return out


def test_symbols_beside_raw_counts_are_found_in_var_when_raw_var_has_none() -> None:
    """CELLxGENE-like file whose raw.var lacks feature_name (var has it, over the same genes):
    the mitochondrial genes were not found (mito 0 for every cell, with a warning to put the
    symbols in a var column, where they were), and the preprocessed data lost the symbols."""
    a = _cellxgene(_atlas(), raw_symbols=False)
    cfg = RunConfig()
    cfg.qc.min_genes_per_cell, cfg.qc.min_cells_per_gene = 10, 5
    out, _ = preprocess(a, cfg.dataset, cfg.qc, cfg.split)
    assert (out.obs["mito"] > 0).all()
    assert "feature_name" in out.var.columns
    assert out.var["feature_name"].astype(str).str.startswith("MT-").sum() == 3
    from cellsynth.cells import for_training  # a fit's model keeps them for its cells' var

    cells = for_training(a, "cell_type", seed=0)
    assert cells.annotation["feature_name"].tolist() == _atlas().var_names.tolist()


@pytest.mark.parametrize("raw_symbols", [True, False])
def test_the_fix_named_for_symbols_beside_raw_counts_works(raw_symbols: bool) -> None:
    """Real cells as CELLxGENE serves them against generated cells named by symbols: the
    error said to set adata.var_names from var['feature_name'], which leaves raw.var_names,
    the genes of the counts, as they were (the same error again), or gave no fix at all when
    raw.var had no symbols. Now the fix renames raw's genes, and doing it works."""
    real, synthetic = _cellxgene(_atlas(seed=0), raw_symbols), _atlas(seed=1)
    with pytest.raises(DataError, match="name raw's genes by it") as err:
        cs.evaluate(real, synthetic, label_key="cell_type", gene_repeats=1)
    fix = re.search(r"\((raw = adata\.raw\.to_adata\(\);.*?), then write", str(err.value))
    assert fix is not None, str(err.value)
    adata = real
    exec(fix.group(1).replace("; ", "\n"), {"adata": adata, "pd": pd})  # the message's fix
    result = cs.evaluate(adata, synthetic, label_key="cell_type", gene_repeats=1)
    assert result.verdict["overall"]["verdict"]


def _unannotated(name: str) -> ad.AnnData:
    """An atlas whose last 20 cells are labelled ``name``, as portals mark unannotated cells."""
    a = _atlas(90)
    labels = a.obs["cell_type"].astype(str).to_numpy().copy()
    labels[-20:] = name
    a.obs["cell_type"] = pd.Categorical(labels)
    return a


def test_cells_labelled_unknown_are_said_to_be_learned_as_a_type_by_run(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A file whose unannotated cells are labelled 'Unknown' (or 'unassigned'): the run's
    uninformative labels ('UNKNOWN', matched by case) kept them, and they were learned and
    generated as a cell type of their own without a word. Now a WARNING says so, with the
    --set that leaves them out; doing it does."""
    monkeypatch.setattr("cellsynth.data.labels._UNANNOTATED_WARNED", set())
    a = _unannotated("Unknown")
    cfg = RunConfig()
    cfg.qc.min_genes_per_cell, cfg.qc.min_cells_per_gene = 10, 5
    with caplog.at_level("WARNING"):
        out, _ = preprocess(a, cfg.dataset, cfg.qc, cfg.split)
    assert "Unknown" in set(out.obs["cell_type"].astype(str))  # behaviour unchanged
    said = re.search(r'20 cells are labelled as having no type.*--set "dataset\.'
                     r'uninformative_prefixes=(\[.*\])"', caplog.text)
    assert said is not None, caplog.text
    cfg.dataset.uninformative_prefixes = eval(said.group(1))  # the list the warning gives
    out, _ = preprocess(a, cfg.dataset, cfg.qc, cfg.split)
    assert "Unknown" not in set(out.obs["cell_type"].astype(str))


@pytest.mark.parametrize("name", ["unassigned", "Unclassified_2", "not available", "NA"])
def test_cells_labelled_unassigned_are_said_to_be_learned_as_a_type_by_a_fit(
        name: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The same for a fit, in Python and through cellsynth fit's reader: once each."""
    from cellsynth.cells import for_training

    for fit in (lambda a: cs.NegBinBaseline().fit(a, "cell_type"),
                lambda a: for_training(a, "cell_type", seed=0)):
        monkeypatch.setattr("cellsynth.data.labels._UNANNOTATED_WARNED", set())
        caplog.clear()
        with caplog.at_level("WARNING"):
            fit(_unannotated(name))
        assert caplog.text.count("labelled as having no type") == 1, caplog.text
        assert f"adata = adata[~adata.obs['cell_type'].isin(['{name}'])].copy()" in caplog.text


def test_a_fit_says_once_where_the_user_s_counts_are(
        tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    """cellsynth fit on counts in X (or raw.X) said 'training on the raw counts in X', then
    twice 'in layers/counts', a layer the file does not have (cellsynth's own copy of the
    cells), and a fit in Python said it twice. Now once, of the user's data."""
    from cellsynth.pipeline.fit import fit_model

    for data, where in ((_atlas(), "X"), (_cellxgene(_atlas(), raw_symbols=True), "raw.X")):
        path = tmp_path / f"{where}.h5ad"
        data.write_h5ad(path)
        for fit in ("file", "anndata"):
            caplog.clear()
            with caplog.at_level("INFO", logger="cellsynth"):
                if fit == "file":
                    fit_model(RunConfig(), path, "cell_type", tmp_path / f"m{where}", model="nb")
                else:
                    cs.NegBinBaseline().fit(data, "cell_type")
            said = re.findall(r"training on the raw counts in (\S+)", caplog.text)
            assert said == [where], caplog.text


def test_an_out_of_core_run_on_rows_of_unsorted_genes_writes_a_file_anndata_can_sum(
        tmp_path) -> None:
    """A CSR whose rows hold their genes out of order (a file written after reordering its
    genes, adata[:, order]): out of core, data/preprocessed.h5ad kept them unsorted beside an
    int64 indptr, and reading it with anndata and calling .X.sum() raised scipy's ValueError
    'Output dtype not compatible with inputs'. Now each row is written in gene order."""
    from cellsynth.data.chunked import preprocess_backed

    a = _atlas(90)
    a = a[:, np.random.default_rng(0).permutation(a.n_vars)].copy()
    assert not a.X.has_sorted_indices
    path = tmp_path / "reordered.h5ad"
    a.write_h5ad(path)
    cfg = RunConfig()
    cfg.qc.min_genes_per_cell, cfg.qc.min_cells_per_gene = 10, 5
    out, _ = preprocess_backed(path, cfg.dataset, cfg.qc, cfg.split, out_path=tmp_path / "p.h5ad",
                               chunk_size=32)
    written = ad.read_h5ad(out)
    mem, _ = preprocess(a, cfg.dataset, cfg.qc, cfg.split)
    assert float(written.X.sum()) == pytest.approx(float(mem.layers["counts"].sum()))
    assert written.X.has_sorted_indices


def test_generate_like_reads_the_genes_of_the_file_s_counts(
        tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    """cellsynth generate --like on a file whose X holds the normalised HVGs and raw.X the
    counts of every gene (scanpy's layout, the model fitted on those counts) warned that the
    twin could not be compared with it gene for gene, which evaluate then did; and a file of
    Ensembl IDs beside symbols had no word of the column that names them. Now the genes of
    the counts are read, as evaluate reads them, and the column is named with the fix."""
    from cellsynth.pipeline.generate import like_request

    a = _atlas()
    genes = list(a.var_names)
    hvg = ad.AnnData(_lognorm(a.X)[:, :40], obs=a.obs.copy(), var=a.var.iloc[:40].copy())
    hvg.raw = a.copy()
    hvg.write_h5ad(tmp_path / "hvg.h5ad")
    _cellxgene(a, raw_symbols=False).write_h5ad(tmp_path / "cxg.h5ad")
    with caplog.at_level("WARNING", logger="cellsynth.pipeline.generate"):
        like_request(tmp_path / "hvg.h5ad", "cell_type", [], genes)
        assert "shares" not in caplog.text
        like_request(tmp_path / "cxg.h5ad", "cell_type", [], genes)
    assert "shares 0 of the model's 120 genes" in caplog.text
    assert "var['feature_name'] holds 120 of the 120 model gene names" in caplog.text
    assert "name raw's genes by it" in caplog.text


def test_scaled_x_without_counts_anywhere_says_where_the_counts_go(tmp_path) -> None:
    """scanpy's layout without counts: X scaled (sc.pp.scale, negative values) over the HVGs,
    raw.X the log-normalised values of every gene. fit, run and evaluate said only that X
    holds negative values, 'not scaled/centred data': nothing of raw.X, nor where to put the
    counts. Now the error says raw.X holds no counts either, and where the counts go."""
    from cellsynth.data.io import find_counts

    a = _atlas()
    logged = a.copy()
    logged.X = _lognorm(a.X)
    logged.raw = logged.copy()
    dense = logged.X.toarray()
    logged.X = ((dense - dense.mean(0)) / (dense.std(0) + 1e-9)).astype(np.float32)
    for data in (logged, tmp_path / "scaled.h5ad"):
        if not isinstance(data, ad.AnnData):
            logged.write_h5ad(data)
        with pytest.raises(DataError, match=r"negative values .*raw\.X holds normalised values, "
                           r"not counts\): give the raw counts, in X, layers\['counts'\] or raw"):
            cs.NegBinBaseline().fit(data, "cell_type")
    with pytest.raises(DataError, match="give the raw counts"):
        find_counts(logged)


def test_doublet_calls_under_scanpy_s_name_are_pointed_to(
        caplog: pytest.LogCaptureFixture) -> None:
    """A file with scanpy's scrublet calls (obs['predicted_doublet'], singular): the run
    skipped the doublet filter at INFO ('no doublet column') and kept every doublet, while the
    calls were beside it. Now a WARNING names the column and the --set that reads it, and
    doing it filters them."""
    a = _atlas()
    a.obs["predicted_doublet"] = np.arange(a.n_obs) % 10 == 0
    a.obs["doublet_score"] = np.linspace(0, 1, a.n_obs)
    cfg = RunConfig()
    cfg.qc.min_genes_per_cell, cfg.qc.min_cells_per_gene = 10, 5
    with caplog.at_level("WARNING"):
        preprocess(a, cfg.dataset, cfg.qc, cfg.split)
    said = re.search(r"""obs has 'predicted_doublet': .*--set "dataset\.doublet_key='(\w+)'""",
                     caplog.text)
    assert said is not None, caplog.text
    assert "doublet_score" not in caplog.text
    cfg.dataset.doublet_key = said.group(1)
    out, _ = preprocess(a, cfg.dataset, cfg.qc, cfg.split)
    assert not out.obs_names.isin(a.obs_names[a.obs["predicted_doublet"]]).any()


def test_info_describes_a_file_without_x(tmp_path, capsys: pytest.CaptureFixture) -> None:
    """An h5ad with no X and the counts in layers['counts'] (anndata allows X=None; fit, run
    and evaluate read it): cellsynth info said 'its files are not the ones cellsynth writes
    (KeyError ...); rerun what wrote them'. Now it describes the file: no X, counts in the
    layer."""
    from cellsynth import cli

    a = _atlas()
    path = tmp_path / "no_x.h5ad"
    ad.AnnData(obs=a.obs, var=a.var, layers={"counts": a.X}).write_h5ad(path)
    assert cli.main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "X: none (the file has no X)" in out and "counts: layers/counts" in out


def test_no_mitochondrial_gene_among_symbols_is_not_told_to_add_symbols(
        caplog: pytest.LogCaptureFixture) -> None:
    """Ensembl IDs with symbols in var['feature_name'], none of them mitochondrial (a gene
    panel, or an atlas filtered of them): the warning said to put symbols in a var column
    named feature_name, where they were. Now it says none is among those symbols."""
    a = _atlas()
    a = a[:, 3:].copy()  # no MT- gene
    cfg = RunConfig()
    cfg.qc.min_genes_per_cell, cfg.qc.min_cells_per_gene = 10, 5
    with caplog.at_level("WARNING", logger="cellsynth.data.qc"):
        preprocess(_cellxgene(a, raw_symbols=True), cfg.dataset, cfg.qc, cfg.split)
    assert "nor among the symbols in var['feature_name']" in caplog.text
    assert "put symbols in a var column" not in caplog.text


def test_the_plots_name_raw_s_fix_too() -> None:
    """cs.pl.umap and cs.pl.library_sizes on the same CELLxGENE-style cells: the fix they
    named (adata.var_names = ...) left raw's genes as they were; now raw's are renamed."""
    real, synthetic = _cellxgene(_atlas(seed=0), raw_symbols=False), _atlas(seed=1)
    for plot in (cs.pl.umap, cs.pl.library_sizes):
        with pytest.raises(DataError, match="name raw's genes by it"):
            plot(real, synthetic, label_key="cell_type", show=False)


def test_counts_overflowed_by_float16_are_named(tmp_path) -> None:
    """X stored as float16 (to halve a file) whose counts above 65,504 became infinite: the
    error said 'NaN or infinite values; replace or drop those cells', as if the data were
    damaged at random. Now it names float16's limit and how to write the counts."""
    from cellsynth.cells import for_training

    a = _atlas()
    x = a.X.toarray()
    x[0, 5] = 70_000
    with np.errstate(over="ignore"):
        a.X = x.astype(np.float16)
    path = tmp_path / "half.h5ad"
    a.write_h5ad(path)
    said = r"stored as float16, which holds values up to 65,504 only.*float32 or int32"
    with pytest.raises(DataError, match=said):
        cs.NegBinBaseline().fit(a, "cell_type")
    with pytest.raises(DataError, match=said):
        for_training(path, "cell_type", seed=0, backed=True)


def test_held_out_cells_as_cellxgene_serves_them_are_named_the_fix() -> None:
    """Held-out cells from a CELLxGENE-style file (Ensembl IDs, symbols in feature_name,
    counts in raw.X) beside real and synthetic cells named by symbols: the error said only
    that they lack every gene compared. Now it names the column and raw's fix, as for the
    real and synthetic sides."""
    train, synthetic = _atlas(seed=0), _atlas(seed=1)
    held = _cellxgene(_atlas(seed=2), raw_symbols=False)
    with pytest.raises(DataError, match=r"held-out data's var\['feature_name'\] holds 120 of "
                                        r"the 120 real gene names.*name raw's genes by it"):
        cs.evaluate(train, synthetic, label_key="cell_type", heldout=held, gene_repeats=1)


def test_antibody_tags_or_peaks_among_the_genes_are_said(
        tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    """A 10x CITE-seq (or multiome) file as read by scanpy: var['feature_types'] marks antibody
    tags ('Antibody Capture') or peaks beside the genes in one X. run and fit modelled every
    feature as a gene without a word. Now a WARNING says how many are not genes and how to
    keep the genes, in memory, out of core and for a fit."""
    from cellsynth.cells import for_training
    from cellsynth.data.chunked import preprocess_backed

    a = _atlas()
    kinds = np.array(["Gene Expression"] * a.n_vars, dtype=object)
    kinds[-10:] = "Antibody Capture"
    a.var["feature_types"] = pd.Categorical(kinds)
    path = tmp_path / "cite.h5ad"
    a.write_h5ad(path)
    cfg = RunConfig()
    cfg.qc.min_genes_per_cell, cfg.qc.min_cells_per_gene = 10, 5
    for step in (lambda: preprocess(a, cfg.dataset, cfg.qc, cfg.split),
                 lambda: preprocess_backed(path, cfg.dataset, cfg.qc, cfg.split,
                                           out_path=tmp_path / "p.h5ad"),
                 lambda: for_training(path, "cell_type", seed=0)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="cellsynth.data.genes"):
            step()
        assert ("marks 10 of the 120 features as other than 'Gene Expression' (Antibody "
                "Capture: 10)") in caplog.text
        assert "adata[:, adata.var['feature_types'] == 'Gene Expression']" in caplog.text


def test_the_prefix_named_for_na_cells_says_what_else_it_would_drop(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """dataset.uninformative_prefixes are prefixes: 'NA' added to them, as the warning of
    cells labelled 'NA' said, would drop 'NAIVE_B' cells too. Now the warning says so, and
    gives the way that drops only those cells."""
    monkeypatch.setattr("cellsynth.data.labels._UNANNOTATED_WARNED", set())
    a = _unannotated("NA")
    labels = a.obs["cell_type"].astype(str).replace({"B cell": "NAIVE_B"})
    a.obs["cell_type"] = pd.Categorical(labels)
    cfg = RunConfig()
    cfg.qc.min_genes_per_cell, cfg.qc.min_cells_per_gene = 10, 5
    with caplog.at_level("WARNING"):
        preprocess(a, cfg.dataset, cfg.qc, cfg.split)
    assert "as prefixes they would also drop 'NAIVE_B': instead, drop them first" in caplog.text
