"""Data at its extremes (session 46's sweep): the shapes, values and labels a real atlas can
have at its edges, through `cellsynth run`, `fit`, `generate`, `evaluate` and the Python API.
Each test fails without its fix."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellsynth.errors import DataError


def small_atlas(n_cells: int = 60, n_genes: int = 40, n_types: int = 3, seed: int = 0) -> ad.AnnData:
    """Poisson counts of ``n_types`` types, each with its own block of raised genes."""
    rng = np.random.default_rng(seed)
    types = np.arange(n_cells) % n_types
    rate = np.full((n_cells, n_genes), 2.0)
    for k in range(n_types):
        rate[types == k, k * 5 : k * 5 + 5] = 20.0
    x = sp.csr_matrix(rng.poisson(rate).astype(np.float32))
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"type {k}" for k in types])},
                       index=[f"cell{i}" for i in range(n_cells)])  # fmt: skip
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))


def _generators():
    import cellsynth as cs
    from cellsynth.config import CVAEConfig

    return {"cvae": lambda: cs.CVAE(config=CVAEConfig(max_epochs=1, n_hidden=[16], device="cpu")),
            "nb": cs.NegBinBaseline}  # fmt: skip


@pytest.mark.parametrize("model", ["cvae", "nb"])
@pytest.mark.parametrize(("shape", "said"), [
    ("no cells", "has 0 cells and 40 genes; an atlas needs both"),
    ("no genes", "has 60 cells and 0 genes; an atlas needs both"),
    ("one cell name twice", "duplicate cell names ('cell0')"),
])  # fmt: skip
def test_fit_on_an_anndata_gets_the_checks_of_a_file(model: str, shape: str, said: str) -> None:
    """An AnnData of no cells was said to have cells without labels (cvae); one of no genes was
    fitted (nb) and sampling it raised torch's RuntimeError; duplicate cell names, refused in a
    file, were fitted on. Now each is the file's one-line DataError."""
    a = small_atlas()
    if shape == "no cells":
        a = a[:0].copy()
    elif shape == "no genes":
        a = a[:, :0].copy()
    else:
        a.obs_names = ["cell0", *a.obs_names[1:-1], "cell0"]
    with pytest.raises(DataError, match=said.replace("(", r"\(").replace(")", r"\)")):
        _generators()[model]().fit(a, "cell_type")


def _cli(capsys, *args: str) -> tuple[int, str]:
    """The command line in this process (no second import of torch): exit code and stderr."""
    from cellsynth import cli

    code = cli.main([*args, "--quiet"])
    return code, capsys.readouterr().err


BINARISED = "holds true/false values (binarised expression"
WRAPPED = "stored as int8, which holds counts up to 127 only"


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory) -> dict[str, Path]:
    """The small atlas with X stored as true/false, as int8 wrapped around (counts over 127
    negative), and with one cell name twice."""
    folder = tmp_path_factory.mktemp("odd")
    files = {"atlas": folder / "atlas.h5ad"}
    a = small_atlas()
    a.write_h5ad(files["atlas"])
    b = a.copy()
    b.X = (b.X > 0).astype(bool)
    files["bool"] = folder / "bool.h5ad"
    b.write_h5ad(files["bool"])
    c = a.copy()
    c.X = c.X.copy()
    c.X.data[-1] = 200  # int8: -56
    c.X = c.X.astype(np.int8)
    files["int8"] = folder / "int8.h5ad"
    c.write_h5ad(files["int8"])
    d = a.copy()
    d.obs_names = ["cell0", *d.obs_names[1:-1], "cell0"]
    files["names"] = folder / "names.h5ad"
    d.write_h5ad(files["names"])
    return files


@pytest.mark.parametrize(("kind", "said"), [
    ("bool", BINARISED), ("int8", WRAPPED), ("names", "has duplicate cell names ('cell0')"),
])  # fmt: skip
def test_a_file_read_from_disk_gets_the_value_checks_of_one_in_memory(
        odd_files: dict[str, Path], kind: str, said: str) -> None:  # fmt: skip
    """Out of core (dataset.backed), values are read as float32: a true/false X was fitted on
    as counts of 1, an int8 X's wrapped counts were called scaled data, and duplicate cell
    names (refused in memory) were fitted on. Now the in-memory read's messages."""
    from cellsynth.cells import for_training

    with pytest.raises(DataError, match=re.escape(said)):
        for_training(odd_files[kind], "cell_type", seed=0, backed=True)


@pytest.mark.parametrize(("kind", "said"), [("bool", BINARISED), ("int8", WRAPPED)])
def test_evaluate_and_an_out_of_core_run_refuse_a_binarised_or_wrapped_file(
        odd_files: dict[str, Path], tmp_path: Path, capsys, kind: str, said: str) -> None:  # fmt: skip
    """`cellsynth evaluate` scored a true/false synthetic file as counts and an out-of-core
    `cellsynth run` ran every stage on one; both read the file by rows from disk."""
    code, err = _cli(capsys, "evaluate", "--real", str(odd_files["atlas"]), "--synthetic",
                     str(odd_files[kind]), "--label-key", "cell_type", "--out",
                     str(tmp_path / "e"))  # fmt: skip
    assert code == 2 and said in err, err
    code, err = _cli(capsys, "run", str(odd_files[kind]), "--out", str(tmp_path / "run"),
                     "--set", "dataset.backed=true")  # fmt: skip
    assert code == 2 and said in err, err
    assert not (tmp_path / "run" / "features").exists()


@pytest.mark.parametrize("model", ["cvae", "nb"])
def test_a_type_whose_every_cell_is_empty_is_named_and_never_generated_empty(
        model: str, caplog) -> None:  # fmt: skip
    """NegBinBaseline.fit kept cells without a count: a type of only such cells was fitted and
    generated as empty cells (and empty cells made empty generated ones); `cellsynth fit` and
    the CVAE left them out, but said only how many cells, not that a whole type was lost."""
    import logging

    a = small_atlas()
    x = a.X.toarray()
    x[(a.obs["cell_type"] == "type 2").to_numpy()] = 0
    x[0] = 0  # one empty cell of a type that keeps others
    a.X = sp.csr_matrix(x)
    gen = _generators()[model]()
    with caplog.at_level(logging.WARNING):
        gen.fit(a, "cell_type")
    assert gen.labels == ["type 0", "type 1"]
    assert "1 cell type(s) have no cell with a count" in caplog.text and "'type 2'" in caplog.text
    cells = gen.sample({"type 0": 30, "type 1": 30})
    assert (np.asarray(cells.X.sum(axis=1)).ravel() > 0).mean() > 0.9
    if model == "nb":
        assert all((lib > 0).all() for lib in gen.libraries)  # the empty cell left out


def test_names_stored_as_numbers_read_from_disk_as_anndata_reads_them(tmp_path: Path) -> None:
    """An h5ad whose var (and obs) index another tool stored as integers: anndata reads the
    names as text ('0', '1', ...), the on-disk reader as numbers, so `cellsynth evaluate` said
    the real file lacked all 40 genes ('0', '1', '2' and 37 more) of the synthetic one."""
    import h5py

    from cellsynth.data.store import H5adFile

    path = tmp_path / "numbers.h5ad"
    small_atlas().write_h5ad(path)
    with h5py.File(path, "r+") as f:
        for group in ("obs", "var"):
            key = f[group].attrs["_index"]
            n = f[group][key].shape[0]
            del f[group][key]
            f[group][key] = np.arange(n, dtype=np.int64)
    with warnings.catch_warnings():  # anndata's "Transforming to str index"
        warnings.simplefilter("ignore")
        read = ad.read_h5ad(path)
    with H5adFile(path) as h5:
        assert list(h5.var_names) == list(read.var_names) == [str(j) for j in range(40)]
        assert list(h5.obs_names) == list(read.obs_names)


def test_a_label_column_of_only_missing_values_is_said_to_be_empty() -> None:
    """Every label missing (NaN: a float column to pandas): fit, run and evaluate called the
    column numeric and told the user to convert it to names, which gives no names either."""
    from cellsynth.data.labels import check_label

    a = small_atlas()
    a.obs["cell_type"] = np.nan
    with pytest.raises(DataError, match="holds no label: all 60 of its values are missing"):
        check_label(a, "cell_type")
    with pytest.raises(DataError, match="holds no label"):
        _generators()["nb"]().fit(a, "cell_type")


def _stored_zeros(a: ad.AnnData, rows: np.ndarray, gene: int) -> ad.AnnData:
    """``a`` with ``rows`` emptied and gene ``gene`` never detected, but every one of their
    places kept in X as a stored zero (as some converters and ``X[X < t] = 0`` leave them)."""
    x = a.X.toarray()
    x[rows] = 0
    x[:, gene] = 0
    stored = (x != 0)
    stored[rows] = True
    stored[:, gene] = True
    r, c = np.nonzero(stored)
    b = a.copy()
    b.X = sp.csr_matrix((x[r, c].astype(np.float32), (r, c)), shape=x.shape)
    assert (b.X.data == 0).sum() > 0
    return b


@pytest.mark.parametrize("backed", [False, True])
def test_stored_zeros_are_not_detections_in_qc(tmp_path: Path, backed: bool) -> None:
    """QC counted a matrix's stored zeros as detected genes: cells without a single count
    passed the genes-per-cell filter (with n_genes of every gene) and a gene no cell detects
    passed the cells-per-gene filter, in memory and out of core alike."""
    from cellsynth.config import RunConfig
    from cellsynth.data.chunked import preprocess_backed
    from cellsynth.data.qc import preprocess

    cfg = RunConfig()
    cfg.qc.min_genes_per_cell, cfg.qc.min_cells_per_gene, cfg.qc.iqr_factor = 5, 3, 100.0
    a = small_atlas(n_cells=90, n_genes=60)
    empty = np.array([0, 1, 2])
    b = _stored_zeros(a, empty, gene=30)
    if backed:
        b.write_h5ad(tmp_path / "in.h5ad")
        path, _ = preprocess_backed(tmp_path / "in.h5ad", cfg.dataset, cfg.qc, cfg.split,
                                    seed=0, out_path=tmp_path / "pre.h5ad")  # fmt: skip
        out = ad.read_h5ad(path)
    else:
        out, _ = preprocess(b, cfg.dataset, cfg.qc, cfg.split, seed=0)
    assert not set(b.obs_names[empty]) & set(out.obs_names)
    assert "g30" not in out.var_names
    kept = b[out.obs_names].X.toarray()
    assert (out.obs["n_genes"].to_numpy() == (kept != 0).sum(axis=1)).all()


def test_a_judged_type_says_why_it_lacks_a_metric() -> None:
    """A run on a small test split: a type judged on 20 real cells, the only one with enough,
    had no gene-level AUC, genes at depth, DE r or marker overlap in per_type.csv, and its note
    was empty (the metrics' own skip reasons were dropped). Now the note gives them."""
    from cellsynth.metrics.verdict_text import per_type_table

    skip = "20 real and 600 synthetic cells; the test needs 20 per side"
    v = {"counts": {"A": {"real": 20, "synthetic": 600}, "B": {"real": 9, "synthetic": 600}},
         "per_type": {"A": {"verdict": "distinguishable", "decided_by": ["knn_recall"]}},
         "too_few": {"B": "9 real and 600 synthetic cells scored"}, "absent": [], "extra": []}
    knn = {"value": 0.5, "floor": 1.0}
    table = per_type_table(
        {"per_type": {"A": {"c2st_auc": 0.9}}}, {"per_type": {"A": {"c2st_auc": 0.5}}},
        verdicts=v, genes={"per_type": {}, "skipped": {"A": skip}, "depth": {"per_type": {}}},
        typewise={"per_type": {"A": {"knn_precision": knn, "knn_recall": knn}}, "skipped": {}})
    note = table.loc["A", "note"]
    assert note.startswith("not scored: gene-level AUC (" + skip + ")")
    assert "genes at depth (fewer than 20 cells" in note
    assert "DE r and marker overlap (a fold change is against the other types" in note
    assert table.loc["B", "note"] == "9 real and 600 synthetic cells scored"


def test_copies_are_found_whether_or_not_a_file_stores_zeros() -> None:
    """The copy checks keyed a cell by its stored values: a held-out (or synthetic) cell equal
    to a training cell but for zeros one file stores was no copy, and a cell of stored zeros
    counted its zeros as detected genes. Now only non-zero values count."""
    from cellsynth.metrics.privacy_dcr import heldout_overlap

    train = small_atlas().X.tocsr()
    heldout = _stored_zeros(small_atlas(), np.array([], dtype=int), gene=39).X[:10]
    train = train.tolil()
    train[:, 39] = 0
    train = sp.csr_matrix(train)
    train.eliminate_zeros()
    assert (heldout.data == 0).any()
    with pytest.raises(DataError, match="10 of 10 held-out cells are identical to training"):
        heldout_overlap(train, heldout)
    empty = sp.csr_matrix((np.zeros(40, np.float32), (np.zeros(40, int), np.arange(40))),
                          shape=(1, 40))  # fmt: skip
    assert heldout_overlap(sp.csr_matrix((1, 40), dtype=np.float32), empty) == 0


def test_detection_counts_leave_out_stored_zeros_block_by_block(monkeypatch):
    """genes_per_cell and cells_per_gene scan the stored values for zeros a block at a time (a
    cumulative sum over every stored value took 8 bytes a value: gigabytes for an atlas)."""
    import scipy.sparse as sp

    from cellsynth.data import csr, qc

    rng = np.random.default_rng(0)
    x = sp.random(50, 40, density=0.3, format="csr", random_state=1, dtype=np.float32)
    x.data[rng.random(x.nnz) < 0.3] = 0.0  # stored zeros, spread over the blocks
    dense = x.toarray()
    monkeypatch.setattr(csr, "_ZERO_SCAN", 7)
    np.testing.assert_array_equal(qc.genes_per_cell(x), (dense != 0).sum(1))
    np.testing.assert_array_equal(qc.cells_per_gene(x), (dense != 0).sum(0))
    x.eliminate_zeros()
    np.testing.assert_array_equal(qc.genes_per_cell(x), np.diff(x.indptr))


def test_names_that_differ_only_by_the_spaces_within_them_are_one_name_split():
    """'B  cell' and 'B cell' passed the label checks (surrounding spaces, Unicode form and case
    were caught) and were learned as two types that every table and page shows alike."""
    from cellsynth.data.labels import check_spaced_names
    from cellsynth.errors import DataError

    check_spaced_names(["B cell", "T cell", "NK"], "cell_type", "cell types")  # distinct: fine
    for twins in (["B cell", "B  cell"], ["B cell", "B\tcell"]):
        with pytest.raises(DataError, match="differ only by the spaces within them") as info:
            check_spaced_names([*twins, "T cell"], "cell_type", "cell types")
        assert "str.replace(r'\\s+', ' '" in str(info.value)
