"""Messages that shorten a list say how many were left out (errors.listed)."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellsynth import keys as K
from cellsynth.data.io import check_shape, check_whole
from cellsynth.errors import DataError, listed
from cellsynth.models._training import encode_labels


def test_listed_takes_a_separator_for_items_that_hold_commas():
    items = [f"t{i}=a, b" for i in range(4)]
    assert listed(items, 2, sep="; ") == "t0=a, b; t1=a, b and 2 more"
    assert listed(items[:2], sep="; ") == "t0=a, b; t1=a, b"


def test_duplicate_cell_names_say_how_many_more():
    names = [f"c{i // 2}" for i in range(20)]  # 10 names, each twice
    a = ad.AnnData(X=np.ones((20, 2), dtype=np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a.obs_names = names
    with pytest.raises(DataError, match=r"duplicate cell names \('c0', 'c1', 'c2' and 7 more\)"):
        check_shape(a, "x.h5ad")


def test_unknown_labels_say_how_many_more():
    y = np.array([f"u{i:02d}" for i in range(15)] + ["a"])
    with pytest.raises(DataError, match=r"does not know: 'u00', .*'u09' and 5 more; known: 'a'$"):
        encode_labels(y, ["a"], "y", 16, drop_unknown=False)


def test_fractional_rows_say_how_many_more_and_no_dots_when_none():
    x = np.ones((10, 3), dtype=np.float32)
    x[2:8, 0] = 0.5
    with pytest.raises(DataError, match=r"rows 2, 3, 4 and 3 more; e\.g\. 0\.5"):
        check_whole(sp.csr_matrix(x))
    x = np.ones((10, 3), dtype=np.float32)
    x[4, 0] = 0.5
    with pytest.raises(DataError, match=r"rows 4; e\.g\. 0\.5"):
        check_whole(sp.csr_matrix(x))


def test_obs_split_values_say_how_many_more():
    from cellsynth.cells import _training_split

    obs = pd.DataFrame({"cell_type": ["a"] * 8, K.SPLIT: [f"s{i}" for i in range(8)]})
    with pytest.raises(DataError, match=r"holds 's0', 's1', 's2', 's3', 's4' and 3 more; its"):
        _training_split(obs, "cell_type", seed=0, val_fraction=0.1)
