"""The gene-level diagnosis behind docs/GENE_LEVEL.md (benchmarks/gene_gap.py) reads each type's
decoded means against that type's training cells, not against every type's decoded means."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from cellsynth.models.cvae import CVAE
from test_cvae import SIM_TYPES, simulated_counts, tiny_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gene_gap

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_decoder_means_are_per_type():
    """Three types, each with its own block of genes 20-fold higher: a type's decoded means,
    at posterior draws and under its mixture, come near its own training means in every bin
    (summed over all types, a block low in one type but high in another read as 1/20)."""
    adata = simulated_counts(n_per_type=60)
    model = CVAE(config=tiny_config(max_epochs=40, select="elbo", patience=40, batch_size=32))
    model.fit(adata, "cell_type", seed=0)
    x = sp.csr_matrix(adata.X, dtype=np.float32)
    y = adata.obs["cell_type"].astype(str).to_numpy()
    rows = gene_gap.decoder_means(model, x, y, seed=0)
    filled = [r for r in rows if r["n_pairs"] >= 20]  # a bin of a few pairs is noise
    assert len(filled) >= 2 and set(y) == set(SIM_TYPES)
    for r in filled:
        assert 0.75 < r["posterior"] < 1.33, r
        assert 0.75 < r["mixture"] < 1.33, r


@pytest.mark.slow
def test_oracles_bound_the_gene_level_test():
    """The reference samples of docs/GENE_LEVEL.md: real training cells score near chance against
    real test cells, and the same cells with a Poisson draw added to every count clearly more
    (the same means, more noise); the cvae's posterior re-draw and the independent draws from
    the training cells are scored beside them."""
    adata = simulated_counts(n_per_type=160, seed=1)
    x = sp.csr_matrix(adata.X, dtype=np.float32)
    y = adata.obs["cell_type"].astype(str).to_numpy()
    test = np.arange(len(y)) % 2 == 1
    model = CVAE(config=tiny_config(max_epochs=20, select="elbo", patience=20, batch_size=32))
    model.fit(adata[~test].copy(), "cell_type", seed=0)
    genes = list(map(str, adata.var_names))
    out = gene_gap.oracles(model, x[~test], y[~test], x[test], y[test], genes, seed=0,
                           repeats=2)
    assert set(out) == {"training", "shuffled", "poisson", "redraw", "independent",
                        "independent_half"}
    assert out["training"]["detected"] < 0.62, out
    assert out["poisson"]["detected"] > out["training"]["detected"] + 0.1, out
    assert all(0.0 <= v <= 1.0 for r in out.values() for v in r.values())


def test_independent_oracle_draws_each_gene_from_its_type():
    """The independent reference sample: as many cells of each type as the test split, each
    gene's counts drawn from that type's training cells (from half of them for the half one),
    genes drawn apart (a cell is not one training cell)."""
    rng = np.random.default_rng(0)
    y = np.repeat(["a", "b"], 50)
    x = np.where(y[:, None] == "a", rng.poisson(1.0, (100, 30)), 100 + rng.poisson(5.0, (100, 30)))
    x = sp.csr_matrix(x.astype(np.float32))
    samples = gene_gap.independent_samples(x, y, {"a": 7, "b": 9}, seed=3)
    assert set(samples) == {"independent", "independent_half"}
    for s in samples.values():
        s = s.toarray()
        assert s.shape == (16, 30)
        for rows, t in ((slice(0, 7), "a"), (slice(7, 16), "b")):
            pool = x[y == t].toarray()
            for g in range(30):
                assert set(s[rows, g]) <= set(pool[:, g])
        copies = [(s[i] == x.toarray()).all(axis=1).any() for i in range(16)]
        assert not all(copies)
