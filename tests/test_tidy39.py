"""Messages that shorten a list say how many were left out (errors.listed)."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellsynth import keys as K
from cellsynth.data.io import check_shape
from cellsynth.data.values import check_whole
from cellsynth.errors import ConfigError, DataError, listed
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


# --- simulate: a bound on types x conditions, and levels that get no cell ------------------------


def test_simulate_refuses_too_many_condition_programs_before_any_work(tmp_path, capsys,
                                                                      monkeypatch):
    """--types 1000 --conditions 1000 would write about 3 million HDF5 objects to uns (hours):
    refused in one line, with the bound, before the model is made or a file is written."""
    from cellsynth import cli
    from cellsynth.data import simulate
    from cellsynth.data._sim_checks import MAX_PROGRAMS

    def no_model(*args, **kwargs):
        raise AssertionError("the model was made")

    monkeypatch.setattr(simulate, "_make_model", no_model)
    out = tmp_path / "big.h5ad"
    assert cli.main(["simulate", "--out", str(out), "--cells", "200", "--types", "1000",
                     "--conditions", "1000", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "1,000 types x 1,000 conditions make 999,000 gene programs" in err
    assert f"at most {MAX_PROGRAMS:,}" in err and "--conditions" in err
    assert len(err.splitlines()) == 1 and not out.exists()
    with pytest.raises(ConfigError, match=r"101 types x 51 conditions make 5,050 gene programs"):
        simulate.simulate_atlas(20, 30, 101, n_conditions=51)


def test_simulate_at_the_bound_is_not_refused(monkeypatch):
    from cellsynth.data import _sim_checks

    _sim_checks.check_design(5_000, 2)
    _sim_checks.check_design(10, 501)
    with pytest.raises(ConfigError, match="5,001 gene programs"):
        _sim_checks.check_design(5_001, 2)


@pytest.mark.parametrize(("kw", "what"), [({"n_donors": 30}, "donors"),
                                          ({"n_conditions": 30}, "conditions")])
def test_simulate_warns_when_levels_get_no_cell(caplog, kw, what):
    import logging

    from cellsynth.data.simulate import simulate_atlas

    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        adata = simulate_atlas(10, 30, 2, seed=0, **kw)
    key = "donor" if what == "donors" else "condition"
    got = adata.obs[key].nunique()
    assert got <= 10 and f"{30 - got} of the 30 {what} got no cell (10 cells, fewer than the " \
        "levels)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        simulate_atlas(200, 30, 2, seed=0, n_donors=3, n_conditions=2)
    assert "got no cell" not in caplog.text
