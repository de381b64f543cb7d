"""Input matrices as users hand them over (session 49's sweep): values that are not numbers
(text, Python objects, complex numbers), a CSR storing a cell's gene in several entries, in
memory and read from disk by fit, run's QC and evaluate. Each test fails without its fix."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import cellsynth as cs
from cellsynth.cells import for_training
from cellsynth.config import RunConfig
from cellsynth.data.chunked import preprocess_backed
from cellsynth.data.qc import preprocess
from cellsynth.errors import DataError


def _atlas(n: int = 90, genes: int = 60, seed: int = 0) -> ad.AnnData:
    """Poisson counts of three types (CSR), each with its own block of raised genes."""
    rng = np.random.default_rng(seed)
    types = np.arange(n) % 3
    rate = np.full((n, genes), 2.0)
    for k in range(3):
        rate[types == k, k * 5 : k * 5 + 5] = 20.0
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"type {k}" for k in types])},
                       index=[f"cell{seed}_{i}" for i in range(n)])
    return ad.AnnData(sp.csr_matrix(rng.poisson(rate).astype(np.float32)), obs=obs,
                      var=pd.DataFrame(index=[f"g{j}" for j in range(genes)]))


@pytest.mark.parametrize(("dtype", "said"), [(object, "Python objects"),
                                             (np.complex64, "complex numbers")])
def test_values_that_are_not_numbers_are_refused_in_memory(dtype, said: str) -> None:
    """An X of Python objects (a table's values with a text column) or of complex numbers
    stopped fit and evaluate with numpy's TypeError traceback."""
    a = _atlas()
    a.X = a.X.toarray().astype(dtype)
    match = rf"X holds {said} \(dtype .*\), not numbers: .*astype\(np.float32\)"
    with pytest.raises(DataError, match=match):
        for_training(a, "cell_type", seed=0)
    with pytest.raises(DataError, match=match):
        cs.NegBinBaseline(a).train()
    with pytest.raises(DataError, match=rf"the real data \(AnnData\): {match}"):
        cs.evaluate(a, _atlas(seed=1), label_key="cell_type", gene_repeats=1)


def test_values_that_are_not_numbers_are_refused_on_disk(tmp_path: Path) -> None:
    """A file of complex counts (sparse) or of text (dense) was read from disk as float32:
    the imaginary parts dropped and the text parsed, and the model trained on them."""
    a = _atlas()
    path = tmp_path / "complex.h5ad"
    a.write_h5ad(path)
    with h5py.File(path, "r+") as f:
        values = f["X/data"][:]
        del f["X/data"]
        f["X"].create_dataset("data", data=values.astype(np.complex64))
    with pytest.raises(DataError, match=r"X holds complex numbers \(dtype complex64\)"):
        for_training(path, "cell_type", seed=0, backed=True)
    with pytest.raises(DataError, match=r"X holds complex numbers"):
        cs.evaluate(path, _atlas(seed=1), label_key="cell_type", gene_repeats=1)
    b = a.copy()
    b.X = b.X.toarray()
    text = tmp_path / "text.h5ad"
    b.write_h5ad(text)
    with h5py.File(text, "r+") as f:
        attrs = dict(f["X"].attrs)
        del f["X"]
        f.create_dataset("X", data=b.X.astype(str).astype(bytes)).attrs.update(attrs)
    with pytest.raises(DataError, match=r"X holds text \(dtype \|S\d+\), not numbers"):
        for_training(text, "cell_type", seed=0, backed=True)
