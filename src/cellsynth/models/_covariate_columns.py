"""Covariate columns of ``obs`` checked: what :class:`~._design.Design` conditions on.

What can be told of the columns before a fit (:func:`check_columns`: distinct, none the label,
``n`` or one of cellsynth's own ``cellsynth_*`` columns, each in ``obs``, none a number of many
values), a column found by its name (:func:`column`, whose error names the fix), missing values
among the cells training reads (:func:`no_missing`). A covariate's name as a request writes
it is matched to the model's by :func:`~cellsynth.data.levels.model_key`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import keys as K
from ..data.labels import missing_labels
from ..errors import DataError, did_you_mean, listed

MAX_LEVELS = 200  # more levels than this in a numeric column: bin it first
#: the prefix of the obs columns cellsynth writes itself (``keys.SPLIT``, ``keys.GROUP``, ...)
OWN_PREFIX = "cellsynth_"


def check_columns(obs: pd.DataFrame, keys: list[str], label_key: str) -> None:
    """What can be told of covariate columns before any cell is read: distinct, none the label
    nor ``n`` (nor the label ``n``: a request table has both) nor one of cellsynth's own
    columns (``cellsynth_*``: a fit writes each cell's split, ``keys.SPLIT``, before its design
    is read), each in ``obs``, none a number of many values (a run checks this before QC;
    :meth:`Design.fit` again on the training cells, with their missing values)."""
    if len(set(keys)) != len(keys) or label_key in keys:
        raise DataError(f"covariates {keys} must be distinct columns other than the label "
                        f"column '{label_key}'")
    own = [k for k in keys if str(k).startswith(OWN_PREFIX)]
    if own:  # the split a fit draws itself (train/val), the coarse group: not the design's
        raise DataError(f"covariate '{own[0]}' is one of cellsynth's own obs columns "
                        f"({OWN_PREFIX}*: {K.SPLIT} is each cell's training split, written by "
                        "the fit itself), not a column of the data's design: condition on the "
                        "data's own columns (donor, condition, batch), or rename a column of "
                        f"yours, e.g. adata.obs.rename(columns={{'{own[0]}': "
                        f"'{own[0][len(OWN_PREFIX):] or 'level'}'}})")
    if "n" in keys:  # a request table's column of cell counts
        raise DataError("a covariate cannot be called 'n' (a request table's column of cell "
                        "counts); rename it, e.g. adata.obs.rename(columns={'n': 'n_level'})")
    if label_key == "n" and keys:  # a request table holds the types and the counts
        raise DataError("with covariates the label column cannot be called 'n' (a request "
                        "table's column of cell counts, beside one of the types); rename it, "
                        "e.g. adata.obs.rename(columns={'n': 'cell_type'}), and fit with "
                        "label_key='cell_type' (--label-key cell_type)")
    for key in keys:
        not_a_number(column(obs, key), key)


def column(obs: pd.DataFrame, key: str) -> pd.Series:
    if key not in obs.columns:
        ours = [str(c) for c in obs.columns if not str(c).startswith(OWN_PREFIX)]
        cols = listed(ours, len(ours)) or "(none)"  # "; " between names holding a comma
        hint = ""
        if "," in str(key) and all(k.strip() in obs.columns for k in str(key).split(",")):
            hint = (f"; '{key}' names several columns: give them as a list, "
                    f"covariate_keys={[k.strip() for k in str(key).split(',')]}")
        whole = [str(c) for c in obs.columns if "," in str(c) and str(key).strip()
                 in (p.strip() for p in str(c).split(","))]  # fmt: skip
        if whole and not hint:  # `--covariates "dose, ng"` split at its comma
            hint = (f"; the column '{whole[0]}' holds a comma, at which --covariates splits its "
                    f"list: give it as --set \"cvae.covariates={[whole[0]]}\" (nb.covariates or "
                    f"scvi.covariates alike; "
                    f"covariate_keys={[whole[0]]} in Python)")
        near = "" if hint else did_you_mean(key, ours)
        raise DataError(f"covariate column '{key}' not in obs{near}; columns are: {cols}{hint}")
    return obs[key]


def no_missing(col: pd.Series, used: np.ndarray, key: str) -> None:
    """Refuse missing values in the cells training reads (``used``): NaN, and missing values
    written as text ("nan", "", "None": ``data.labels.MISSING_TEXT``), counted together, with
    one fix that mends them all."""
    part = col.iloc[used]
    gone = missing_labels(part)
    if not gone.any():
        return
    nan = int(part.isna().sum())
    texts = sorted(set(part[gone & part.notna().to_numpy()].astype(str).str.strip()))
    kinds = ([f"{nan} NaN"] if nan else []) + (
        [f"{int(gone.sum()) - nan} written as text ({', '.join(map(repr, texts))})"] if texts else [])
    n_all = int(missing_labels(col).sum())
    where = "" if n_all == int(gone.sum()) else f" training reads ({n_all} in the column)"
    replace = sorted(set(part[gone].astype(str).str.strip()))  # NaN as astype(str) writes it
    raise DataError(
        f"covariate '{key}' is missing for {int(gone.sum())} cells{where}: {', '.join(kinds)}; "
        f"give them a level (e.g. adata.obs['{key}'] = adata.obs['{key}'].astype(str).str"
        f".strip().replace({replace!r}, 'unknown')) or drop those cells")


def not_a_number(values: pd.Series, key: str) -> None:
    if pd.api.types.is_numeric_dtype(values) and values.nunique() > MAX_LEVELS:
        raise DataError(
            f"covariate '{key}' is numeric with {values.nunique()} distinct values; "
            f"covariates are categorical: bin it first, e.g. adata.obs['{key}_bin'] = "
            f"pd.cut(adata.obs['{key}'], 5).astype(str), and condition on '{key}_bin'")


