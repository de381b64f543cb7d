"""`cellsynth evaluate` with files as other tools and common preparations make them (session
42's sweep): donors stored as numbers two ways, rounded normalised values, synthetic cells that
are the held-out cells, backed views, per-type depth, small types, and the messages."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cellsynth.metrics.privacy import NO_DONOR, donor_values


def test_a_donor_stored_as_1_and_as_1_0_is_one_donor():
    """A column of numbers turns float once it holds a NaN: donor 1.0 is donor 1 (the audit
    took them for two, and ran a donor-level attack on donors that both sides share)."""
    ints = donor_values(pd.Series([1, 2, 3], name="donor"))
    floats = donor_values(pd.Series([1.0, np.nan, 3.0], name="donor"))
    assert ints.tolist() == ["1", "2", "3"]
    assert floats.tolist() == ["1", NO_DONOR, "3"]
    text = donor_values(pd.Series(["01", None, "d7"], name="donor", dtype=object))
    assert text.tolist() == ["01", NO_DONOR, "d7"]  # text as written
    cat = donor_values(pd.Series(pd.Categorical(["a", None, "b"]), name="donor"))
    assert cat.tolist() == ["a", NO_DONOR, "b"]


def _sim(n: int = 600, seed: int = 0):
    from cellsynth.data.simulate import simulate_atlas

    a = simulate_atlas(n, 120, 3, seed=seed, doublet_rate=0.0, uninformative_rate=0.0)
    return a


def test_rounded_normalised_values_are_said_when_read_for_an_evaluation(caplog):
    """Totals of 10,000 a cell, rounded: whole numbers, so they pass as counts; a fit says they
    look normalised, and now an evaluation reading them does too."""
    import scipy.sparse as sp

    from cellsynth.evaluation.inputs import _checked, _Sample

    a = _sim()
    x = sp.csr_matrix(a.X, dtype=np.float64)
    x = sp.csr_matrix(sp.diags(1e4 / np.asarray(x.sum(axis=1)).ravel()) @ x)
    x.data = np.rint(x.data)
    sample = _Sample(x.astype(np.float32), a.obs["cell_type"].astype(str).to_numpy(),
                     a.var_names, a.n_obs, "AnnData", "X")
    with caplog.at_level("WARNING"):
        _checked(sample, "the synthetic data")
    assert "look like normalised values rounded to whole numbers" in caplog.text


def test_synthetic_cells_that_are_the_held_out_cells_are_copies(caplog):
    """The test file given as the synthetic one (renamed here) read as a perfect generator that
    passed the privacy audit; its cells are copies of real (held-out) cells."""
    import cellsynth as cs

    a = _sim(900, seed=1)
    train, test = a[:600].copy(), a[600:].copy()
    fake = test.copy()
    fake.obs_names = [f"g{i}" for i in range(fake.n_obs)]
    result = cs.evaluate(train, fake, label_key="cell_type", heldout=test, max_cells=300,
                         gene_repeats=1)
    memo = result["memorisation"]
    assert memo["flagged"] and memo["exact_copies"] > 0
    assert any("looked for among 900 real cells read: a lower bound" in r for r in memo["reasons"])
    assert result.verdict["overall"]["verdict"] == "copies of real cells"


def test_a_backed_view_is_read_as_the_view_with_its_obs_as_edited(tmp_path):
    """A backed AnnData was read whole from its file: a view without a type, or labels edited
    in memory, were scored as the file had them."""
    import anndata as ad

    from cellsynth.evaluation.inputs import _read_side

    a = _sim(300, seed=2)
    a.obs_names = [f"c{i}" for i in range(a.n_obs)]
    a.write_h5ad(tmp_path / "s.h5ad")
    b = ad.read_h5ad(tmp_path / "s.h5ad", backed="r")
    keep = (b.obs["cell_type"] != "type_00").to_numpy()
    rows = np.flatnonzero(keep)[::-1]  # cells in another order, some genes: one view
    view = b[rows, b.var_names[10:50]]
    got = _read_side(view, "cell_type", lambda labels: np.arange(len(labels)), "the synthetic data")
    assert "type_00" not in set(got.labels) and got.counts.shape == (view.n_obs, 40)
    assert list(got.genes) == list(view.var_names)
    mem = a[rows, a.var_names[10:50]]
    assert abs(got.counts - mem.X).max() == 0  # the same cells, in the view's order
    b.obs["cell_type"] = b.obs["cell_type"].astype(str).replace("type_00", "edited")
    got = _read_side(b, "cell_type", lambda labels: np.arange(len(labels)), "the synthetic data")
    assert "edited" in set(got.labels) and got.n_total == a.n_obs


def test_held_out_cells_without_the_label_column_are_told_to_add_it():
    import pytest

    from cellsynth.errors import DataError
    from cellsynth.evaluation.inputs import _check_columns

    a = _sim(100)
    del a.obs["cell_type"]
    with pytest.raises(DataError, match=r"the held-out data \(x\.h5ad\): .*add obs\['cell_type'\]"):
        _check_columns(a, "cell_type", None, "the held-out data", "x.h5ad")


def _reports(rows: dict[str, tuple]) -> tuple[dict, dict]:
    """``fidelity_report``-like and ``real_floor``-like dicts: per type (n, AUC, floor AUC,
    library-size distance, its floor)."""
    fs = {"overall": {}, "per_type": {}}
    ff = {"overall": {}, "per_type": {}}
    for t, (n, auc, floor, lib, lib_floor) in rows.items():
        fs["per_type"][t] = {"c2st_auc": auc, "n_real": n, "n_synth": n,
                             "library_size_distance": lib}
        ff["per_type"][t] = {"c2st_auc": floor, "n_real": n, "n_synth": n,
                             "library_size_distance": lib_floor}
    return fs, ff


def test_a_type_generated_too_deep_is_distinguishable_and_depth_never_vouches():
    from cellsynth.metrics.verdict import fidelity_verdict

    fs, ff = _reports({"deep": (300, 0.52, 0.50, 0.50, 0.02),
                       "fine": (300, 0.52, 0.50, 0.03, 0.02),
                       "small": (25, 0.55, 0.50, 0.03, 0.02)})
    v = fidelity_verdict(fs, ff)
    assert v["per_type"]["deep"]["verdict"] == "distinguishable"
    assert v["per_type"]["deep"]["decided_by"] == ["library_size_distance"]
    assert v["per_type"]["fine"]["verdict"] == "indistinguishable"
    assert "small" in v["too_few"]  # its AUC cannot vouch at 25 cells, nor can its depth


def test_weak_metrics_do_not_vouch_for_a_type_whose_noisy_auc_reads_a_large_gap():
    """22 cells: k-NN recall 0.49 against a floor of 1.0 is within its noise (its spread over
    splits), and k-NN precision and marker overlap read the cells alike; the type was called
    indistinguishable on them."""
    from cellsynth.metrics.verdict import fidelity_verdict

    fs, ff = _reports({"delta": (22, 0.785, 0.683, 0.03, 0.02),
                       "ok": (22, 0.52, 0.50, 0.03, 0.02)})
    block = {"knn_precision": {"value": 1.0, "floor": 0.98, "sd": 0.01, "n": 22},
             "marker_overlap": {"value": 0.36, "floor": 0.36, "sd": 0.01, "n": 22}}
    noisy = {**block, "knn_recall": {"value": 0.49, "floor": 1.0, "sd": 0.2, "n": 22}}
    typewise = {"per_type": {"delta": noisy, "ok": block}}
    v = fidelity_verdict(fs, ff, typewise=typewise)
    assert "delta" not in v["per_type"]
    assert "kNN recall 0.490" in v["too_few"]["delta"]
    assert "a gap that would make the type distinguishable" in v["too_few"]["delta"]
    assert v["per_type"]["ok"]["verdict"] == "indistinguishable"  # small gaps: vouched as before


def _sample(genes, n: int = 30, seed: int = 0):
    import scipy.sparse as sp

    from cellsynth.evaluation.inputs import _Sample

    rng = np.random.default_rng(seed)
    x = sp.csr_matrix(rng.poisson(1.0, (n, len(genes))).astype(np.float32))
    return _Sample(x, np.array(["a"] * n), pd.Index(genes), n, "AnnData", "X")


def test_a_synthetic_file_of_some_of_the_real_genes_is_compared_on_them(caplog):
    """A generator of the top HVGs: every synthetic gene is a real one; it was refused with
    advice about symbols and Ensembl IDs."""
    from cellsynth.evaluation.inputs import _shared_genes

    real = _sample([f"g{i}" for i in range(1000)])
    synth = _sample([f"g{i}" for i in range(0, 1000, 4)])  # 250 of them
    with caplog.at_level("WARNING"):
        assert len(_shared_genes(real, synth)) == 250
    assert "every synthetic gene is a real one" in caplog.text


def test_names_that_differ_only_by_case_are_named_when_some_genes_match(caplog):
    import pytest

    from cellsynth.errors import DataError
    from cellsynth.evaluation.inputs import _shared_genes

    genes = [f"Gene{i}" for i in range(400)]
    real = _sample(genes)
    half = _sample([g.upper() if i % 2 else g for i, g in enumerate(genes)])
    with caplog.at_level("WARNING"):
        assert len(_shared_genes(real, half)) == 200
    assert "alike but for case" in caplog.text
    most = _sample([g.upper() if i % 4 else g for i, g in enumerate(genes)])
    with pytest.raises(DataError, match=r"share only 100 of the 400 .* 300 of them not among the "
                                        r"real ones, but they are alike but for case"):
        _shared_genes(real, most)


def test_a_layer_of_denoised_values_is_named_as_such():
    import pytest

    from cellsynth.errors import DataError
    from cellsynth.evaluation.inputs import _counts_where

    a = _sim(100)
    import scipy.sparse as sp

    x = sp.csr_matrix(a.X, dtype=np.float32)
    denoised = x.copy()
    denoised.data = denoised.data * 0.5 + 0.25  # not whole numbers
    a.layers["counts"] = denoised
    x.data = np.log1p(x.data)
    a.X = x
    with pytest.raises(DataError, match=r"layers\['counts'\] holds non-integer values"):
        _counts_where(a, "the synthetic data", "AnnData")


def test_type_names_written_with_underscores_get_the_real_name():
    import pytest

    from cellsynth.errors import DataError
    from cellsynth.evaluation.inputs import _check_labels

    real = pd.Series({"B cells": 50, "CD4 T cells": 60})
    synth = pd.Series({"B_cells": 50, "CD4.T.cells": 60})
    with pytest.raises(DataError, match=r"'B_cells' \(real: 'B cells'\).*'CD4\.T\.cells' \(real: "
                                        r"'CD4 T cells'\)"):
        _check_labels(real, synth, "cell_type")


def test_a_file_stored_by_genes_is_read(tmp_path):
    """A CSC h5ad is valid: it was refused ("rewrite it as CSR"); small enough, it is read."""
    import anndata as ad
    import scipy.sparse as sp

    from cellsynth.evaluation.inputs import _read_side

    a = _sim(200, seed=4)
    b = ad.AnnData(sp.csc_matrix(a.X, dtype=np.float32), obs=a.obs, var=a.var)
    b.write_h5ad(tmp_path / "csc.h5ad")
    got = _read_side(tmp_path / "csc.h5ad", "cell_type", lambda labels: np.arange(len(labels)),
                     "the real data")
    assert abs(got.counts - sp.csr_matrix(a.X)).max() == 0
