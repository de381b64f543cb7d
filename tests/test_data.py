"""Loading, count detection, QC and split on real and hand-made data."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellsynth import config
from cellsynth import keys as K
from cellsynth.data.groups import load_groups
from cellsynth.data.io import find_counts, read
from cellsynth.data.qc import normalise_log1p, preprocess, sparse_variance
from cellsynth.data.split import balanced_subsample, stratified_split, stratified_subsample
from cellsynth.errors import DataError


def _cfg(*overrides: str) -> config.RunConfig:
    return config.load(None, list(overrides))


def _toy(n_per_type=(60, 40, 30), n_genes=200, seed=0, label_key="cell_type") -> ad.AnnData:
    rng = np.random.default_rng(seed)
    blocks, labels = [], []
    for t, n in enumerate(n_per_type):
        mu = rng.gamma(1.0, 2.0, n_genes)
        mu[t * 10 : t * 10 + 10] += 20
        blocks.append(rng.poisson(mu, (n, n_genes)))
        labels += [f"type{t}"] * n
    x = sp.csr_matrix(np.vstack(blocks).astype(np.float32))
    genes = [f"MT-{i}" if i < 3 else f"G{i}" for i in range(n_genes)]
    obs = pd.DataFrame({label_key: pd.Categorical(labels)}, index=[f"c{i}" for i in range(x.shape[0])])
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=genes))


def test_read_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read(tmp_path / "missing.h5ad")
    txt = tmp_path / "x.h5ad"
    txt.write_text("hello")
    with pytest.raises(DataError, match="not an h5ad"):
        read(txt)
    good = tmp_path / "good.h5ad"
    _toy().write_h5ad(good)
    trunc = tmp_path / "trunc.h5ad"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match=r"truncated or corrupt|not an h5ad"):
        read(trunc)
    assert read(good, backed=True).isbacked


def test_find_counts_in_x_layer_and_raw(kang):
    assert find_counts(kang).counts == "X"
    norm = kang.copy()
    norm.layers["counts"] = norm.X.copy()
    norm.X = normalise_log1p(sp.csr_matrix(norm.X), 1e4)
    assert find_counts(norm).counts == "layers/counts"
    raw = kang.copy()
    raw.raw = raw
    raw.X = normalise_log1p(sp.csr_matrix(raw.X), 1e4)
    assert find_counts(raw).counts == "raw.X"
    only = kang.copy()
    only.X = normalise_log1p(sp.csr_matrix(only.X), 1e4)
    e = find_counts(only)
    assert e.counts is None and e.normalised
    with pytest.raises(DataError, match="is_normalised = false"):
        find_counts(only, False)


@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_bad_values(bad):
    a = _toy()
    a.X = a.X.toarray()
    a.X[0, 5] = bad
    with pytest.raises(DataError, match=r"negative|NaN"):
        find_counts(a)


def test_split_is_stratified_and_seeded():
    labels = np.array(["a"] * 100 + ["b"] * 50 + ["c"] * 3)
    s = stratified_split(labels, (0.7, 0.1, 0.2), seed=1)
    for t, n in (("a", 100), ("b", 50)):
        sel = s[labels == t]
        assert (sel == "train").sum() == pytest.approx(0.7 * n, abs=1)
        assert (sel == "test").sum() == pytest.approx(0.2 * n, abs=1)
    assert (s[labels == "c"] == "train").sum() >= 1
    assert (s == stratified_split(labels, (0.7, 0.1, 0.2), seed=1)).all()
    assert not (s == stratified_split(labels, (0.7, 0.1, 0.2), seed=2)).all()
    idx = balanced_subsample(labels, 10, seed=0)
    assert len(idx) == 10 + 10 + 3
    # a cap in all: each type keeps its share, the rarest at least one cell; sorted, seeded
    idx = stratified_subsample(labels, 30, seed=0)
    assert [(labels[idx] == t).sum() for t in "abc"] == [19, 10, 1]  # 30: the largest gives one
    assert (np.diff(idx) > 0).all() and (idx == stratified_subsample(labels, 30, seed=0)).all()
    assert (stratified_subsample(labels, 200, seed=0) == np.arange(len(labels))).all()
    # "at most" holds where the rounding and the one-cell floor overshoot: 5 rare types, 4 or 9
    rare = np.array(["big"] * 1000 + list("vwxyz"))
    assert len(stratified_subsample(rare, 9, seed=0)) == 9
    assert set(rare[stratified_subsample(rare, 9, seed=0)]) == {"big", *"vwxyz"}
    assert len(stratified_subsample(rare, 4, seed=0)) == 4  # fewer than the types: at random
    rng = np.random.default_rng(0)
    for _ in range(100):
        labels = rng.integers(0, rng.integers(1, 30), size=rng.integers(2, 400)).astype(str)
        cap = int(rng.integers(1, len(labels)))
        idx = stratified_subsample(labels, cap, seed=1)
        assert len(idx) <= cap and len(np.unique(idx)) == len(idx)


def test_normalise_and_variance():
    x = sp.csr_matrix(np.array([[1.0, 3.0, 0.0], [0.0, 2.0, 2.0]]))
    n = normalise_log1p(x, 4.0).toarray()
    assert np.allclose(n, np.log1p([[1, 3, 0], [0, 2, 2]]))
    d = np.random.default_rng(0).poisson(2, (50, 4)).astype(float)
    assert np.allclose(sparse_variance(sp.csr_matrix(d)), d.var(axis=0))


def test_preprocess_steps_on_hand_made_data():
    a = _toy()
    a.obs["predicted_doublets"] = ["True"] * 5 + ["False"] * (a.n_obs - 5)
    labels = a.obs["cell_type"].astype(str).to_numpy()
    labels[5:8] = "LOW_Q_x"
    labels[8] = ""
    a.obs["cell_type"] = labels
    cfg = _cfg("qc.min_genes_per_cell=10", "qc.min_cells_per_gene=5")
    out, rep = preprocess(a, cfg.dataset, cfg.qc, cfg.split, seed=0)
    steps = {s["step"]: s for s in rep.steps}
    assert steps["predicted doublets"]["cells_removed"] == 5
    assert steps["uninformative labels"]["cells_removed"] == 3
    assert steps["no label"]["cells_removed"] == 1
    assert sp.issparse(out.X) and sp.issparse(out.layers[K.COUNTS])
    assert set(out.obs[K.SPLIT]) == {"train", "val", "test"}
    assert {K.MITO, K.N_GENES} <= set(out.obs.columns)
    assert out.obs[K.MITO].max() > 0  # MT- genes present
    # X is log1p of counts per 10k
    row = out.layers[K.COUNTS][0].toarray().ravel()
    assert out.X[0].toarray().ravel().max() <= np.log1p(1e4)
    assert row.sum() > 0


def test_preprocess_drops_rare_types_and_refuses_single_cells():
    a = _toy(n_per_type=(80, 60, 8))
    cfg = _cfg("qc.min_genes_per_cell=10", "qc.min_cells_per_gene=5")
    out, rep = preprocess(a, cfg.dataset, cfg.qc, cfg.split, seed=0)
    assert rep.dropped_types == ["type2"]
    assert "type2" not in set(out.obs["cell_type"])
    b = _toy(n_per_type=(80, 60, 1))
    with pytest.raises(DataError, match="single cell"):
        preprocess(b, cfg.dataset, cfg.qc, cfg.split, seed=0)


def test_a_qc_step_that_removes_most_cells_is_named_with_its_setting(caplog):
    """Thresholds made for other data: a step that removes most cells warns and names its
    setting; when a later step then has nothing to keep, the error names the earlier culprit."""
    a = _toy(n_per_type=(60, 40, 30), n_genes=200)
    x = a.X.toarray()
    kept = np.r_[0:10, 60:70]  # ten cells of two types; the others detect at most 60 genes
    x[np.setdiff1d(np.arange(a.n_obs), kept), 60:] = 0
    a.X = sp.csr_matrix(x)
    cfg = _cfg("qc.min_genes_per_cell=100", "qc.min_cells_per_gene=5", "qc.min_cells_per_type=2")
    with caplog.at_level("WARNING", logger="cellsynth.data.qc"):
        preprocess(a, cfg.dataset, cfg.qc, cfg.split, seed=0)
    assert "QC step 'fewer than 100 genes' removed 110 of 130 cells (85%): if that is not " \
        "meant for this data, change qc.min_genes_per_cell" in caplog.text
    cfg = _cfg("qc.min_genes_per_cell=100", "qc.min_cells_per_gene=50")
    with pytest.raises(DataError, match=r"no genes left after the QC step 'genes in < 50 train "
                       r"cells'.*only 20 cells were left to count them in: the step 'fewer than "
                       r"100 genes' removed 110 of 130; change qc.min_genes_per_cell"):
        preprocess(a, cfg.dataset, cfg.qc, cfg.split, seed=0)
    caplog.clear()  # the default thresholds on the same data before the change: no warning
    with caplog.at_level("WARNING", logger="cellsynth.data.qc"):
        preprocess(_toy(), *(lambda c: (c.dataset, c.qc, c.split))(
            _cfg("qc.min_genes_per_cell=10", "qc.min_cells_per_gene=5")), seed=0)
    assert "removed" not in caplog.text


def test_missing_and_numeric_label_column():
    a = _toy()
    cfg = _cfg("dataset.label_key=celltype")
    with pytest.raises(DataError, match="columns are: cell_type"):
        preprocess(a, cfg.dataset, cfg.qc, cfg.split)
    a.obs["num"] = np.arange(a.n_obs)
    cfg = _cfg("dataset.label_key=num")
    with pytest.raises(DataError, match="numeric"):
        preprocess(a, cfg.dataset, cfg.qc, cfg.split)


def test_preprocess_real_kang(kang):
    cfg = _cfg()
    out, rep = preprocess(kang, cfg.dataset, cfg.qc, cfg.split, groups={"B cells": "B"}, seed=0)
    assert out.n_obs > 0.9 * kang.n_obs
    assert out.n_vars <= kang.n_vars
    assert out.obs[K.GROUP].astype(str).isin(["B", "CD4 T cells", "CD8 T cells",
                                               "CD14+ Monocytes", "FCGR3A+ Monocytes"]).all()
    assert rep.steps[-1]["genes_left"] == out.n_vars


def test_iqr_bounds_fitted_on_train_only():
    a = _toy(n_per_type=(200, 150))
    a.obs["mito"] = np.random.default_rng(0).uniform(0.01, 0.05, a.n_obs)
    cfg = _cfg("qc.min_genes_per_cell=10", "qc.min_cells_per_gene=5")
    out, _ = preprocess(a, cfg.dataset, cfg.qc, cfg.split, seed=0)
    # make every non-training cell an extreme outlier: the fences must not move
    b = a.copy()
    held_out = ~a.obs_names.isin(out.obs_names[out.obs[K.SPLIT] == "train"])
    b.obs.loc[held_out, "mito"] = 0.9
    out_b, _ = preprocess(b, cfg.dataset, cfg.qc, cfg.split, seed=0)
    train_a = out.obs_names[out.obs[K.SPLIT] == "train"]
    train_b = out_b.obs_names[out_b.obs[K.SPLIT] == "train"]
    assert list(train_a) == list(train_b)
    assert (out_b.obs[K.SPLIT] != "train").sum() == 0  # held-out outliers removed


def test_groups_packaged_and_files(tmp_path):
    g = load_groups("e-annd-5")
    assert len(g) == 126 and g["MAST_CELL"] == "Mast Cells"
    assert len(set(g.values())) == 24
    j = tmp_path / "g.json"
    j.write_text('{"a": "A"}')
    assert load_groups(str(j)) == {"a": "A"}
    with pytest.raises(DataError, match="neither a packaged"):
        load_groups("nope")
