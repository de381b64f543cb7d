"""Covariates misused (session 49's sweep): one of cellsynth's own columns as a covariate."""

from __future__ import annotations

import numpy as np
import pytest

from cellsynth import keys as K
from cellsynth.cli import main
from cellsynth.errors import DataError
from test_covariates import _design_atlas


def test_cellsynth_s_own_columns_are_refused_as_covariates(tmp_path, capsys):
    """``fit --covariates cellsynth_split`` on a file without that column fitted a model
    conditioned on the split the fit itself had drawn (one level, 'train', with a warning that
    it tells nothing), and on a run's preprocessed data, on its train/val/test split."""
    from cellsynth.models import NegBinBaseline, check_covariate_columns

    a = _design_atlas(seed=1)[:300].copy()
    a.write_h5ad(tmp_path / "design.h5ad")
    assert main(["fit", str(tmp_path / "design.h5ad"), "--label-key", "cell_type", "--model",
                 "nb", "--covariates", K.SPLIT, "--out", str(tmp_path / "m"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "covariate 'cellsynth_split' is one of cellsynth's own obs columns" in err
    assert "adata.obs.rename(columns={'cellsynth_split': 'split'})" in err
    assert not (tmp_path / "m").exists()
    a.obs[K.SPLIT] = np.array(["train", "train", "val", "test"])[np.arange(a.n_obs) % 4]
    a.obs[K.GROUP] = "all"
    for key in (K.SPLIT, K.GROUP):
        with pytest.raises(DataError, match=f"covariate '{key}' is one of cellsynth's own"):
            NegBinBaseline(covariate_keys=["condition", key]).fit(a, "cell_type")
        with pytest.raises(DataError, match=f"covariate '{key}' is one of cellsynth's own"):
            check_covariate_columns(a.obs, [key], "cell_type")  # a run's, before QC
