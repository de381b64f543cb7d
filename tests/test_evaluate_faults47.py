"""`cellsynth evaluate` / `cs.evaluate` misused as users do (session 47's sweep): labels
missing as text beside held-out cells that are training cells, ..."""

from __future__ import annotations

import pytest

from cellsynth.errors import DataError


def _sim(n: int = 300, seed: int = 0, genes: int = 120, types: int = 3):
    from cellsynth.data.simulate import simulate_atlas

    a = simulate_atlas(n, genes, types, seed=seed, doublet_rate=0.0, uninformative_rate=0.0)
    a.obs["cell_type"] = a.obs["cell_type"].astype(str)
    return a


def test_training_cells_in_heldout_are_found_when_some_labels_are_missing_as_text():
    """Real cells labelled "" (missing written as text) shifted the positions the name check
    read: held-out cells that were training cells crashed it (IndexError), or were compared
    with other cells."""
    import anndata as ad

    from cellsynth.evaluation.inputs import _check_disjoint

    a = _sim(300)
    a.obs_names = [f"c{i}" for i in range(a.n_obs)]
    real, test = a[:200].copy(), a[200:].copy()
    labels = real.obs["cell_type"].copy()
    labels.iloc[:20] = ""
    real.obs["cell_type"] = labels
    heldout = ad.concat([test, real[-60:]])  # the last training cells, under their names
    with pytest.raises(DataError, match=r"share about 60 of their 160 cells"):
        _check_disjoint(real, heldout, "cell_type", 0)
