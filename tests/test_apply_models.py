"""A saved PCA and classifier applied to new cells: genes matched by name, or refused."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from cellsynth.classify.xgb import train_classifier
from cellsynth.config import ClassifierConfig
from cellsynth.errors import DataError
from cellsynth.features.pca import PCAModel


def _pca(n_genes: int = 12, k: int = 3) -> PCAModel:
    rng = np.random.default_rng(0)
    comps = np.linalg.qr(rng.normal(size=(n_genes, k)))[0].T.astype(np.float32)
    return PCAModel(comps, rng.random(n_genes), None, np.ones(k), np.ones(k) / k,
                    [f"g{i}" for i in range(n_genes)])


def test_an_anndata_is_projected_by_gene_name_and_a_bare_matrix_is_checked(caplog):
    pca = _pca()
    rng = np.random.default_rng(1)
    x = np.log1p(rng.poisson(2.0, (20, 12))).astype(np.float32)
    want = pca.transform(x)
    order = rng.permutation(12)
    shuffled = ad.AnnData(sp.csr_matrix(x[:, order]))
    shuffled.var_names = [pca.genes[i] for i in order]
    extra = ad.concat([shuffled, ad.AnnData(np.ones((20, 1), np.float32),
                                            var={"_": ["x"]}).copy()], axis=1)
    extra.var_names = [*shuffled.var_names, "not_fitted"]
    np.testing.assert_allclose(pca.transform(shuffled), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pca.transform(extra), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(DataError, match="2 of the 12 genes the PCA was fitted on are not"):
        pca.transform(shuffled[:, 2:])
    with pytest.raises(DataError, match="fitted on 12 genes, the data has 11"):
        pca.transform(x[:, 1:])
    with pytest.raises(DataError, match="2-d matrix"):
        pca.transform(x[0])
    counts = shuffled.copy()
    counts.X = sp.csr_matrix(rng.poisson(40.0, (20, 12)).astype(np.float32))
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        pca.transform(counts)
    assert "looks like raw counts" in caplog.text


def test_the_classifier_refuses_inputs_of_other_features():
    rng = np.random.default_rng(0)
    y = np.repeat(["a", "b", "c"], 30)
    x = rng.normal(size=(90, 5)).astype(np.float32) + (np.arange(90) // 30)[:, None]
    clf = train_classifier(x, y, x, y, ClassifierConfig(n_estimators=5, n_jobs=1), seed=0)
    assert clf.predict(x[:3]).shape == (3,)
    for bad in (x[:, :3], np.hstack([x, x])[:4], x[0]):
        with pytest.raises(DataError, match="trained on 5 features"):
            clf.predict(bad)
    with pytest.raises(DataError, match="not an AnnData"):
        clf.predict(ad.AnnData(x))
