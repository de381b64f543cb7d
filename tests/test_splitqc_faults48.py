"""QC per cell type and the train/validation/test split (sweep 48): what the QC report says was
removed, the settings a direct call of the data stage is given, and a split column given in
the data."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellsynth import config
from cellsynth.data.qc import preprocess

SETS = ["qc.min_genes_per_cell=10", "qc.min_cells_per_gene=5"]


def _atlas(seed: int = 0) -> ad.AnnData:
    """Three types of Poisson counts (60, 40 and 30 cells), MT- genes among them."""
    rng = np.random.default_rng(seed)
    blocks, labels = [], []
    for t, n in enumerate((60, 40, 30)):
        mu = rng.gamma(1.0, 2.0, 120)
        mu[t * 10 : t * 10 + 10] += 20
        blocks.append(rng.poisson(mu, (n, 120)))
        labels += [f"type{t}"] * n
    x = sp.csr_matrix(np.vstack(blocks).astype(np.float32))
    obs = pd.DataFrame({"cell_type": labels}, index=[f"c{i}" for i in range(x.shape[0])])
    var = pd.DataFrame(index=[f"MT-{i}" if i < 3 else f"G{i}" for i in range(120)])
    return ad.AnnData(x, obs=obs, var=var)


# fault 1: the report's cells per type "before QC" were counted after the first steps


def test_the_cells_per_type_before_qc_are_the_inputs_and_add_up_with_the_steps():
    """A type whose every cell a first step removed (doublets, cells without a count) was in
    the report's dropped types but had no row in the "before QC" table of the report, and the
    other types' "before QC" and "removed" left out their doublets: the counts were taken
    after those steps. They are now the input's labelled cells."""
    a = _atlas()
    labels = a.obs["cell_type"].to_numpy().copy()
    labels[100:110] = "empty"  # ten cells of type2 become a type without a count
    a.obs["cell_type"] = labels
    x = a.X.tolil()
    x[100:110] = 0
    a.X = x.tocsr()
    a.obs["predicted_doublets"] = np.arange(a.n_obs) % 10 == 3  # 13 doublets
    cfg = config.load(None, SETS)
    _, rep = preprocess(a, cfg.dataset, cfg.qc, cfg.split, seed=0)
    assert rep.dropped_types == ["empty"]
    assert rep.cells_per_type_before == {"type0": 60, "type1": 40, "type2": 20, "empty": 10}
    removed = sum(step["cells_removed"] for step in rep.steps)
    assert removed >= 10 + 13
    assert sum(rep.cells_per_type_before.values()) - sum(rep.cells_per_type_after.values()) \
        == removed
