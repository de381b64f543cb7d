"""The Python API under a scanpy user's misuse (session 46's sweep): ``cs.pl.library_sizes``
compares the two sides over the genes both hold, as ``cs.evaluate`` does."""

from __future__ import annotations

import logging

import anndata as ad
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import cellsynth as cs
from cellsynth.errors import DataError


@pytest.fixture(scope="module")
def atlas() -> ad.AnnData:
    return cs.simulate(240, 60, 3, seed=0)


def _lines(ax) -> list[np.ndarray]:
    out = [np.asarray(line.get_ydata(), dtype=float) for line in ax.lines]
    plt.close(ax.figure)
    return out


def test_library_sizes_of_a_synthetic_gene_subset_are_over_the_shared_genes(atlas, caplog):
    real, fake = atlas[::2].copy(), atlas[1::2].copy()
    hvgs = fake[:, 10:40].copy()  # a generator of some genes beside the whole atlas
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        drawn = _lines(cs.pl.library_sizes(real, hvgs, label_key="cell_type", show=False))
    assert "over the 30 genes both sides hold (real 60, synthetic 30)" in caplog.text
    alike = _lines(cs.pl.library_sizes(real[:, 10:40].copy(), hvgs, label_key="cell_type",
                                       show=False))  # fmt: skip
    assert len(drawn) == len(alike) and all(map(np.array_equal, drawn, alike))
    renamed = fake.copy()
    renamed.var["symbol"] = renamed.var_names
    renamed.var_names = [f"ENSG{i:05d}" for i in range(renamed.n_vars)]
    with pytest.raises(DataError, match=r"share no gene name, but the synthetic data's "
                                        r"var\['symbol'\] holds 60"):
        cs.pl.library_sizes(real, renamed)
