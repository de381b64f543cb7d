"""Faults of the paths for scale and for more than one process: counts with a few corrected
values, the distributed fit's workers on a stop, the Dask scheduler's address."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from cellsynth.data.io import find_counts


def test_counts_with_a_few_fractional_values_are_not_called_unlogged_normalised_values():
    import anndata as ad

    rng = np.random.default_rng(0)
    x = rng.poisson(3.0, (300, 200)).astype(np.float32)
    x[:, 0] = rng.integers(100, 2000, 300)  # a highly expressed gene: counts above 50
    frac = np.flatnonzero(x.ravel())[:20]
    x.flat[frac] += 0.5  # a few corrected values
    note = find_counts(ad.AnnData(sp.csr_matrix(x))).note
    assert "looks like raw counts" in note and "np.rint" in note
    assert "not log-transformed" not in note
    cpm = x / x.sum(axis=1, keepdims=True) * 1e6  # normalised, never logged: still said so
    assert "not log-transformed" in find_counts(ad.AnnData(sp.csr_matrix(cpm))).note
