"""Covariates misused (session 47's sweep): an empty ``--covariates``, a held-out combination
that takes a whole level (or a level's missing values) out of training, missing levels among
validation cells in a run, and ``--holdout`` levels that hold a comma."""

from __future__ import annotations

from cellsynth.cli import main
from test_covariates import _design_atlas


def test_an_empty_covariates_option_is_refused(tmp_path, capsys):
    """``fit --covariates "$COVS"`` with COVS unset (or ``--covariates ,``) fitted a model
    without covariates, without a word."""
    data = tmp_path / "design.h5ad"
    _design_atlas(seed=1)[:300].copy().write_h5ad(data)
    for given in ("", " , "):
        assert main(["fit", str(data), "--label-key", "cell_type", "--model", "nb",
                     "--covariates", given, "--out", str(tmp_path / "m"), "--quiet"]) == 2
        assert "--covariates names no column" in capsys.readouterr().err
        assert not (tmp_path / "m").exists()
