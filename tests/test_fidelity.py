"""Fidelity metrics on distributions whose answer is known, and the evaluation space."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from cellsynth.data.qc import normalise_log1p
from cellsynth.data.store import H5adFile
from cellsynth.errors import DataError
from cellsynth.metrics import (
    FidelityConfig,
    c2st_auc,
    correlation_distance,
    energy_distance,
    fidelity_report,
    fit_space,
    gene_stats_spearman,
    knn_precision_recall,
    library_size_distance,
    marker_overlap,
    mmd_rbf,
    real_floor,
)
from cellsynth.metrics import space as space_mod

N_GENES, N_TYPES, N_MARKERS = 200, 4, 15
#: small caps keep the suite fast; the metrics are the same
FAST = FidelityConfig(c2st_max_n=300, kernel_max_n=300, knn_max_n=300, n_folds=3,
                      n_markers=N_MARKERS)


def nb_model(seed: int = 0) -> dict[str, np.ndarray]:
    """Per-type gene shares: a shared baseline, 15 markers per type, and one gene program."""
    rng = np.random.default_rng(seed)
    base = rng.lognormal(0.0, 1.0, N_GENES)
    shares = np.tile(base, (N_TYPES, 1))
    markers = rng.permutation(N_GENES)[: N_TYPES * N_MARKERS].reshape(N_TYPES, N_MARKERS)
    for t in range(N_TYPES):
        shares[t, markers[t]] *= 8.0
    program = rng.choice(N_GENES, 30, replace=False)  # co-varying genes: correlation structure
    return {"shares": shares, "markers": markers, "program": program}


def nb_counts(model: dict, n_per_type: list[int], seed: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Negative-binomial counts (theta 5) of each type, log-normal libraries around 2,000."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([f"type{t}" for t in range(N_TYPES)], n_per_type)
    types = np.repeat(np.arange(N_TYPES), n_per_type)
    shares = model["shares"][types].copy()
    shares[:, model["program"]] *= rng.lognormal(0.0, 1.0, (len(types), 1))
    shares /= shares.sum(axis=1, keepdims=True)
    mu = shares * rng.lognormal(np.log(2000), 0.3, (len(types), 1))
    theta = 5.0
    counts = rng.poisson(rng.gamma(theta, mu / theta))
    return sp.csr_matrix(counts.astype(np.float32)), labels


@pytest.fixture(scope="module")
def model() -> dict:
    return nb_model(0)


@pytest.fixture(scope="module")
def space(model):
    x, y = nb_counts(model, [150] * N_TYPES, seed=1)
    return fit_space(x, y, [f"g{i}" for i in range(N_GENES)], n_hvg=100, n_pcs=10, seed=0)


def gaussian(n: int, shift: float = 0.0, seed: int = 0, d: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)) + shift


def test_space_shapes_and_hvgs(model, space):
    x, y = nb_counts(model, [20] * N_TYPES, seed=2)
    assert space.embed(x).shape == (80, 10) and space.n_pcs == 10
    assert len(space.hvg) == 100 and np.all(np.diff(space.hvg) > 0)
    np.testing.assert_allclose(space.lognorm(x).toarray(), normalise_log1p(x, 1e4).toarray())
    # markers vary between types, so most are highly variable
    assert np.isin(model["markers"], space.hvg).mean() > 0.8
    wide = fit_space(x, y, [f"g{i}" for i in range(N_GENES)], n_hvg=5000, n_pcs=5)
    assert len(wide.hvg) == N_GENES  # clamped to the genes there are
    with pytest.raises(DataError, match="genes"):
        space.embed(x[:, :50])


def test_space_from_disk_in_chunks_is_the_whole_matrix_fit(model, tmp_path, monkeypatch):
    """The evaluation space read a few cells at a time from an h5ad (as the out-of-core pipeline
    fits it) picks the HVGs that whole-matrix dispersions pick and the PCA of the in-memory fit."""
    import anndata as ad

    x, y = nb_counts(model, [60] * N_TYPES, seed=4)
    genes = [f"g{i}" for i in range(N_GENES)]
    ad.AnnData(x, obs={"t": y}).write_h5ad(tmp_path / "real.h5ad")
    rows = np.arange(5, x.shape[0], 2)  # a subset of the cells, as a training split is
    monkeypatch.setattr(space_mod, "CHUNK", 17)  # many chunks, the last one partial
    with H5adFile(tmp_path / "real.h5ad") as f:
        backed = fit_space(f.X, y[rows], genes, rows=rows, n_hvg=50, n_pcs=5, seed=3)
    xn = normalise_log1p(x[rows], 1e4)  # every gene's total, then the HVG columns
    whole = space_mod.normalised_dispersion(xn)
    np.testing.assert_array_equal(backed.hvg, np.sort(np.argsort(-whole, kind="stable")[:50]))
    np.testing.assert_allclose(backed.pca.mean, xn[:, backed.hvg].mean(axis=0).A1, rtol=1e-5)
    mem = fit_space(x[rows], y[rows], genes, n_hvg=50, n_pcs=5, seed=3)
    np.testing.assert_array_equal(mem.hvg, backed.hvg)
    np.testing.assert_allclose(np.abs(mem.pca.components), np.abs(backed.pca.components),
                               atol=1e-5)
    np.testing.assert_allclose(np.abs(mem.embed(x[:20])), np.abs(backed.embed(x[:20])), atol=1e-4)
    with pytest.raises(DataError, match="labels"):
        fit_space(sp.csr_matrix(x), y, genes, rows=rows)


def test_same_and_shifted_gaussians():
    a, b, shifted = gaussian(300, seed=1), gaussian(300, seed=2), gaussian(300, 1.0, seed=3)
    assert abs(c2st_auc(a, b, seed=0) - 0.5) < 0.1
    assert c2st_auc(a, shifted, seed=0, n_folds=3) > 0.9
    same_mmd, shift_mmd = mmd_rbf(a, b, seed=0), mmd_rbf(a, shifted, seed=0)
    assert abs(same_mmd) < 0.01 and shift_mmd > 0.1 and shift_mmd > 20 * abs(same_mmd)
    same_e, shift_e = energy_distance(a, b, seed=0), energy_distance(a, shifted, seed=0)
    assert abs(same_e) < 0.1 and shift_e > 1.0
    small = dict(seed=5, n_folds=2, max_n=50)
    assert c2st_auc(a, b, **small) == c2st_auc(a, b, **small)  # seeded


def test_c2st_sees_spread_not_only_means():
    a, wide = gaussian(300, seed=1), 2.0 * gaussian(300, seed=2)
    assert c2st_auc(a, wide, seed=0, n_folds=3) > 0.8


def test_knn_precision_recall():
    real = gaussian(400, seed=1)
    p, r = knn_precision_recall(real, gaussian(400, seed=2))
    assert p > 0.75 and r > 0.75
    p_far, _ = knn_precision_recall(real, gaussian(400, 20.0, seed=3))
    assert p_far == 0.0
    # mode collapse: real has two modes, synthetic only one
    bimodal = np.concatenate([gaussian(200, -5.0, seed=4), gaussian(200, 5.0, seed=5)])
    p_one, r_one = knn_precision_recall(bimodal, gaussian(400, 5.0, seed=6))
    assert p_one > 0.75 and r_one < 0.6
    # collapse to (almost) one point: realistic cells, no diversity
    point = 5.0 + 1e-3 * gaussian(400, seed=7)
    p_pt, r_pt = knn_precision_recall(bimodal, point)
    assert p_pt > 0.9 and r_pt < 0.1


def test_permuted_genes_detected(model):
    real, _ = nb_counts(model, [100] * N_TYPES, seed=3)
    other, _ = nb_counts(model, [100] * N_TYPES, seed=4)
    perm = np.random.default_rng(0).permutation(N_GENES)
    shuffled = real[:, perm]
    same_stats, perm_stats = gene_stats_spearman(real, other), gene_stats_spearman(real, shuffled)
    for key in ("mean", "variance", "zero_fraction"):
        assert same_stats[key] > 0.9 and abs(perm_stats[key]) < 0.4
    assert same_stats["n_genes"] == N_GENES
    assert gene_stats_spearman(real, other, genes=np.arange(10))["n_genes"] == 10
    ln = [normalise_log1p(x, 1e4) for x in (real, other, shuffled)]
    assert correlation_distance(ln[0], ln[0]) == pytest.approx(0.0, abs=1e-9)
    same_corr, perm_corr = correlation_distance(ln[0], ln[1]), correlation_distance(ln[0], ln[2])
    assert perm_corr > 2 * same_corr


def test_markers_and_library_sizes(model):
    x, y = nb_counts(model, [60] * N_TYPES, seed=5)
    ln = normalise_log1p(x, 1e4)
    overlap = marker_overlap(ln, y, ln, y, n=N_MARKERS)
    assert overlap["mean"] == 1.0 and set(overlap["per_type"]) == set(np.unique(y))
    shuffled = np.random.default_rng(0).permutation(y)
    assert marker_overlap(ln, y, ln, shuffled, n=N_MARKERS)["mean"] < 0.5
    assert library_size_distance(x, x) == 0.0
    assert library_size_distance(x, x * 10) == pytest.approx(1.0, abs=1e-5)  # log10(10)


def test_real_floor_is_near_chance(model, space):
    x, y = nb_counts(model, [160, 160, 160, 7], seed=6)
    floor = real_floor(space, x, y, seed=0, cfg=FAST)
    assert sum(floor["halves"]) == len(y) and abs(floor["halves"][0] - floor["halves"][1]) <= 4
    assert abs(floor["overall"]["c2st_auc"] - 0.5) < 0.1
    assert floor["overall"]["marker_overlap"]["mean"] > 0.8  # the 15 true markers per type
    assert set(floor["per_type"]) == {"type0", "type1", "type2"}
    assert "type3" in floor["skipped"]  # 3-4 cells per half
    for row in floor["per_type"].values():
        assert abs(row["c2st_auc"] - 0.5) < 0.2  # 80 cells a side: noisy, hence the floor


def test_fidelity_report_per_type(model, space):
    real, ry = nb_counts(model, [120, 60, 60, 30], seed=7)
    noisy = real.copy()
    noisy.data = np.random.default_rng(0).poisson(noisy.data * 1.5).astype(np.float32)
    keep = np.r_[np.arange(60), np.arange(120, 180), np.arange(180, 240), np.arange(240, 245)]
    rep = fidelity_report(space, real, ry, noisy[keep], ry[keep], seed=0, cfg=FAST)
    assert set(rep["per_type"]) == {"type0", "type1", "type2"}
    assert "fewer than 10" in rep["skipped"]["type3"]
    row = rep["per_type"]["type0"]
    for key in ("c2st_auc", "mmd_rbf", "energy_distance", "knn_precision", "knn_recall",
                "gene_mean_spearman", "library_size_distance", "n_real", "n_synth"):
        assert key in row
    assert row["n_real"] == 120 and row["n_synth"] == 60
    overall = rep["overall"]
    assert overall["n_per_type"] == {"type0": 60, "type1": 60, "type2": 60, "type3": 5}
    assert overall["n_per_side"] == 185 and rep["n_real"] == 270 and rep["n_synth"] == 185
    assert overall["library_size_distance"] > 0.1  # 1.5x counts
    assert overall["gene_stats"]["mean"] > 0.9  # per-gene means keep their order
    assert set(rep["per_type_mean"]) >= {"c2st_auc", "mmd_rbf"}


def test_fidelity_report_errors(model, space):
    x, y = nb_counts(model, [20] * N_TYPES, seed=8)
    with pytest.raises(DataError, match=r"share no cell type \(real: 'type0', .*; synthetic: "
                                        r"'other'\); check the label column"):
        fidelity_report(space, x, y, x, np.full(len(y), "other"), seed=0, cfg=FAST)
    one = np.unique(y, return_index=True)[1]  # one real cell of each type: no two halves
    with pytest.raises(DataError, match=r"no type has 2 real cells \(4 cells of 4 types\); give "
                                        r"more real cells"):
        real_floor(space, x[one], y[one], seed=0, cfg=FAST)
    with pytest.raises(DataError, match="genes"):
        fidelity_report(space, x, y, x[:, :10], y, seed=0, cfg=FAST)
    with pytest.raises(DataError, match="labels"):
        fidelity_report(space, x, y[:5], x, y, seed=0, cfg=FAST)
