"""What the classifier is given, checked before XGBoost reads it: its settings
(:func:`checked_config`) and its features (:func:`check_features`). XGBoost's own checks end in
a C++ stack trace, and some settings it takes train to no purpose."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..config import ClassifierConfig
from ..config_rules import from_dict
from ..config_rules import hints as config_hints
from ..errors import ConfigError, DataError


def checked_config(cfg: Any) -> ClassifierConfig:
    """``cfg`` (a :class:`ClassifierConfig` or a dict of its settings) with its types and ranges
    checked as a config file's ``[classifier]`` table is: a section built in Python is not
    checked when built, and XGBoost answered ``n_estimators = 0`` or ``max_depth = -1`` with
    a traceback and trained on ``learning_rate = 0`` or ``subsample = 0`` to no purpose."""
    if isinstance(cfg, ClassifierConfig):
        cfg = dataclasses.asdict(cfg)
    elif not isinstance(cfg, dict):
        raise ConfigError(f"cfg takes a ClassifierConfig (ClassifierConfig(n_estimators=200), "
                          f"or RunConfig().classifier) or a dict of its settings, got "
                          f"{type(cfg).__name__}")
    with config_hints(lambda key: f"give another {key.removeprefix('classifier.')} in the "
                                  "ClassifierConfig"):  # fmt: skip
        return from_dict(ClassifierConfig, cfg, "classifier.")


def check_features(X: Any, what: str, offset: int = 0) -> None:
    """Refuse infinite features (XGBoost's C++ check failed with a stack trace); a NaN is a
    missing value to XGBoost, as it is meant to be. ``offset``: the row number of ``X``'s first
    row, for a block of a larger matrix."""
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        bad = np.isinf(X.data)
        rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))[bad] if bad.any() else []
    elif isinstance(X, np.ndarray):
        rows = np.flatnonzero(np.isinf(X).any(axis=1)) if X.ndim == 2 else []
    else:
        return  # a dask array: XGBoost's workers read it
    if len(rows):
        rows = np.unique(rows)
        raise DataError(f"{what} hold infinite values ({len(rows)} of {X.shape[0]} cells, e.g. "
                        f"row {offset + rows[0]}): features must be finite (a NaN is read as "
                        "missing); drop or mend those cells")
