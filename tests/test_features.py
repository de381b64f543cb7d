from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition import PCA

from cellsynth.config import FeaturesConfig
from cellsynth.errors import ModelFileError
from cellsynth.features import pca as pca_mod
from cellsynth.features.pca import PCAModel, fit_pca


def _data(n=600, g=300, rank=5, seed=0):
    rng = np.random.default_rng(seed)
    d = np.maximum(rng.standard_normal((n, rank)) @ rng.standard_normal((rank, g)) * 0.5
                   + rng.standard_normal((n, g)) * 0.3, 0)
    return d, rng.integers(0, 4, n).astype(str)


METHODS = {"exact covariance": (10_000, 0), "exact Gram": (0, 10_000), "randomized SVD": (0, 0)}


def use_method(monkeypatch, method: str) -> None:
    """Make ``_fit`` take ``method`` by moving its gene and cell thresholds."""
    max_genes, max_cells = METHODS[method]
    monkeypatch.setattr(pca_mod, "EXACT_MAX_GENES", max_genes)
    monkeypatch.setattr(pca_mod, "EXACT_MAX_CELLS", max_cells)
    monkeypatch.setattr(pca_mod, "GRAM_MIN_SHARE", 0.0)


@pytest.mark.parametrize("method", list(METHODS))
def test_matches_sklearn_without_densifying(monkeypatch, caplog, method):
    use_method(monkeypatch, method)
    caplog.set_level("INFO", logger="cellsynth.features.pca")
    d, y = _data()
    m = fit_pca(sp.csr_matrix(d), y, [f"g{i}" for i in range(d.shape[1])],
                FeaturesConfig(n_components=10), seed=0)
    assert f"PCA ({method})" in caplog.text
    ref = PCA(10).fit(d)
    assert np.allclose(m.explained_variance[:5], ref.explained_variance_[:5], rtol=1e-4)
    z, zr = m.transform(sp.csr_matrix(d), chunk_size=101), ref.transform(d)
    assert np.allclose(np.abs(z[:, :5]), np.abs(zr[:, :5]), atol=1e-3)
    assert np.allclose(m.inverse_transform(z), ref.inverse_transform(zr), atol=1e-3)


def test_scaling_and_clamp(caplog):
    d, y = _data(n=40, g=30)
    m = fit_pca(sp.csr_matrix(d), y, [f"g{i}" for i in range(30)],
                FeaturesConfig(n_components=2500, scale=True), seed=0)
    assert m.n_components == 30
    assert "more than the data allow" in caplog.text
    sd = d.std(axis=0)
    ref = PCA(5).fit((d - d.mean(0)) / sd)
    assert np.allclose(np.abs(m.transform(d)[:, :3]),
                       np.abs(ref.transform((d - d.mean(0)) / sd)[:, :3]), atol=1e-3)


def test_balanced_subsample_and_save_load(tmp_path):
    d, y = _data()
    m = fit_pca(sp.csr_matrix(d), y, [f"g{i}" for i in range(d.shape[1])],
                FeaturesConfig(n_components=8, max_cells_per_class=20), seed=0)
    assert m.n_components == 8
    m.save(tmp_path)
    m2 = PCAModel.load(tmp_path)
    assert np.array_equal(m.transform(d), m2.transform(d))
    (tmp_path / "genes.json").write_text('["a"]')
    with pytest.raises(ModelFileError):
        PCAModel.load(tmp_path)


# exact covariance reading the cells every pass; randomized SVD holding them after the first
@pytest.mark.parametrize(("method", "cache_bytes"),
                         [("exact covariance", 0), ("exact Gram", 0), ("randomized SVD", 1 << 30)])
def test_backed_store_gives_the_in_memory_result(kang_path, tmp_path, monkeypatch, method,
                                                 cache_bytes):
    """PCA fitted on the training cells read from disk equals the one fitted in memory."""
    import anndata as ad

    from cellsynth import config
    from cellsynth.data.chunked import PreprocessedStore, preprocess_backed
    from cellsynth.data.qc import preprocess

    use_method(monkeypatch, method)
    cfg = config.load(None, ["features.n_components=20", "features.max_cells_per_class=150"])
    pre, _ = preprocess(ad.read_h5ad(kang_path), cfg.dataset, cfg.qc, cfg.split, seed=0)
    out, _ = preprocess_backed(kang_path, cfg.dataset, cfg.qc, cfg.split, seed=0,
                               out_path=tmp_path / "pre.h5ad", chunk_size=200)
    train = (pre.obs["cellsynth_split"] == "train").to_numpy()
    labels = pre.obs["cell_type"].astype(str).to_numpy()
    genes = list(pre.var_names)
    monkeypatch.setattr(pca_mod, "_BLOCK_ROWS", 64)  # several blocks, the same in both paths
    m = fit_pca(pre.X[train], labels[train], genes, cfg.features, seed=1)
    with PreprocessedStore(out) as store:
        mb = fit_pca(store.normalised, labels[train], genes, cfg.features, seed=1,
                     rows=np.flatnonzero(train), cache_bytes=cache_bytes)
        assert np.array_equal(mb.components, m.components)
        assert np.array_equal(mb.explained_variance, m.explained_variance)
        z = m.transform(pre.X, chunk_size=300)
        out_npy = np.lib.format.open_memmap(tmp_path / "z.npy", mode="w+", dtype=np.float32,
                                            shape=z.shape)
        zb = mb.transform(store.normalised, chunk_size=300, out=out_npy)
        assert zb is out_npy and np.array_equal(np.asarray(zb), z)
        # one split alone (e.g. into its own .npy for the classifier)
        zt = mb.transform(store.normalised.subset(np.flatnonzero(train)), chunk_size=250)
        assert np.array_equal(zt, z[train])
    assert np.array_equal(np.load(tmp_path / "z.npy"), z)


def test_few_components_of_wide_panels_take_the_randomized_svd(monkeypatch, caplog):
    """Under the Gram share the randomized SVD is cheaper; at or above it, the exact Gram."""
    monkeypatch.setattr(pca_mod, "EXACT_MAX_GENES", 0)
    caplog.set_level("INFO", logger="cellsynth.features.pca")
    d, y = _data(n=200, g=300)
    genes = [f"g{i}" for i in range(300)]
    fit_pca(sp.csr_matrix(d), y, genes, FeaturesConfig(n_components=10), seed=0)
    assert "PCA (randomized SVD)" in caplog.text
    fit_pca(sp.csr_matrix(d), y, genes, FeaturesConfig(n_components=20), seed=0)
    assert "PCA (exact Gram)" in caplog.text
