"""Data at its extremes (session 46's sweep): the shapes, values and labels a real atlas can
have at its edges, through `cellsynth run`, `fit`, `generate`, `evaluate` and the Python API.
Each test fails without its fix."""

from __future__ import annotations

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
