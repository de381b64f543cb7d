"""What the classifier is given, checked before XGBoost reads it: its settings
(:func:`checked_config`) and its features (:func:`check_features`); and the files of a saved
classifier, checked as they are read back (:func:`saved_labels`, :func:`saved_meta`,
:func:`saved_best`). XGBoost's own checks end in a C++ stack trace, and some settings it takes
train to no purpose."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..config import ClassifierConfig
from ..config_rules import from_dict
from ..config_rules import hints as config_hints
from ..errors import ConfigError, DataError, ModelFileError, listed
from ..outputs import saved_json

#: ClassifierConfig settings XGBoost reads as 32-bit floats
FLOAT_PARAMETERS = ("subsample", "colsample_bytree", "learning_rate", "reg_alpha", "reg_lambda")
#: how a damaged classifier is written again, said where one cannot be read back
REWRITE = ("a run's: rerun it with --force classifier, or --force experiments for "
           "classifier_synthetic")


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
        checked = from_dict(ClassifierConfig, cfg, "classifier.")
    tiny = float(np.finfo(np.float32).tiny)
    for key in FLOAT_PARAMETERS:  # XGBoost reads 32-bit floats: 1e-300 is out of its range
        if 0 < (value := getattr(checked, key)) < tiny:
            raise ConfigError(f"classifier.{key} = {value:g} is below what XGBoost reads (a "
                              f"32-bit float: at least {tiny:.3g}, or 0 where 0 is allowed); "
                              f"give a larger {key}")
    return checked


def check_matrix(X: Any, what: str) -> None:
    """``X`` is a cells x features matrix of numbers with at least one feature: XGBoost failed
    with a C++ stack trace on none, unpacking its shape on 1-d or 3-d input, numpy's
    conversion on text (a list of rows is taken, as numpy reads it)."""
    shape = getattr(X, "shape", None)
    if shape is None or (getattr(X, "dtype", None) is not None and X.dtype.kind in "OUSV"):
        try:
            shape = np.asarray(X, dtype=np.float32).shape
        except (TypeError, ValueError) as exc:
            raise DataError(f"{what} must be a cells x features matrix of numbers "
                            f"({type(exc).__name__}: {str(exc)[:100]})") from None
    if len(shape) != 2 or shape[1] < 1:
        hint = (": one cell is x.reshape(1, -1), one feature x.reshape(-1, 1)"
                if len(shape) == 1 else "")
        raise DataError(f"{what} must be a cells x features matrix with at least one feature, "
                        f"got shape {tuple(shape)}{hint}")


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


def read_json(path: Path) -> Any:
    """A saved classifier's JSON file; a :class:`ModelFileError` for one that is not JSON."""
    return saved_json(path, "train it again (cellsynth run ... --force classifier)")


def saved_labels(path: Path) -> list[str]:
    """The label list of a saved classifier: strings, each type once and named (a type named
    twice was predicted for two output columns; a blank one was loaded as a type)."""
    labels = read_json(path)
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ModelFileError(f"{path} must be a JSON list of strings")
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice or any(not x.strip() for x in labels):  # each output column is one type
        what = f"names {listed(twice, 5, quote=True)} more than once" if twice else \
            "holds a blank label"
        raise ModelFileError(f"{path} {what}: it was not written by Classifier.save (each "
                             f"class is one named type); save the classifier again ({REWRITE})")
    return labels


def saved_meta(path: Path) -> dict:
    """A saved classifier's ``meta.json`` (``{}`` where there is none), a JSON object."""
    meta = read_json(path) if path.is_file() else {}
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path} must be a JSON object (as Classifier.save writes), not "
                             f"a {type(meta).__name__}")
    return meta


def saved_best(meta: dict, booster: Any, path: Path) -> int:
    """The saved best round (``meta``'s, else the booster's own attribute, else its last),
    one of the booster's rounds: an integer that was not one ended in a traceback."""
    n_rounds = booster.num_boosted_rounds()
    best = meta.get("best_iteration", booster.attr("best_iteration") or n_rounds - 1)
    try:
        best = int(best) if not isinstance(best, bool | float) else None
    except (TypeError, ValueError):
        best = None
    if best is None or not 0 <= best < n_rounds:
        raise ModelFileError(f"{path}: best_iteration {meta.get('best_iteration')!r} is not "
                             f"one of the {n_rounds} saved rounds (0 to {n_rounds - 1})")
    return best
